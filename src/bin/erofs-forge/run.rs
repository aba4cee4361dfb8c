//! One library call per subcommand, between resolving its arguments and printing its result.

use crate::out::outln;
use anyhow::Result;
use erofs_forge::ops::{self, report::Report};
use erofs_forge::staged::write_atomic;
use erofs_forge::Digester;

use crate::args::{ChunkdictCommand, Command};
use crate::report::{self, Bar};
use crate::resolve::{self, CreatePlan, ExportPlan};

/// Runs a parsed command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Create(a) => match resolve::create(a)? {
            CreatePlan::Layer(opts) => {
                let bar = Bar::for_stderr();
                let out = ops::create::create(&opts, &bar)?;
                bar.finish();
                report::created(&out);
            }
            CreatePlan::Oci { opts, platform } => {
                let bar = Bar::for_stderr();
                let out = ops::oci::create_oci(&opts, platform.as_deref(), &bar)?;
                bar.finish();
                report::created_oci(&out, opts.blob_cache_dir.as_deref());
            }
            CreatePlan::OciErofs {
                opts,
                platform,
                compression,
            } => {
                let out = ops::oci::create_oci_erofs(&opts, platform.as_deref(), compression)?;
                outln!("image layout: {}", out.dir.display());
                outln!("source image: {} ({} layers)", out.platform, out.layers);
                outln!("manifest: {}", out.manifest);
                for l in &out.erofs_layers {
                    outln!("EROFS layer: {}", l.display());
                }
            }
        },
        Command::Merge(a) => report::merged(&ops::merge::merge(&resolve::merge(a)?)?),
        Command::Export(a) => match resolve::export(a) {
            ExportPlan::Tar(opts) => {
                outln!("exported {} entries", ops::unpack::unpack(&opts)?);
            }
            ExportPlan::Compressed(opts) => {
                let size = ops::export_compressed::export(&opts)?;
                let (algo, out) = (opts.compressor, opts.output.display());
                outln!("EROFS image ({algo}): {out} ({size} bytes)");
            }
            ExportPlan::Block(opts) => report::exported_block(&ops::export::export_block(&opts)?),
        },
        Command::Check(a) => check(a)?,
        Command::Unpack(a) => {
            let n = ops::unpack::unpack(&resolve::unpack(a)?)?;
            outln!("unpacked {n} entries");
        }
        Command::Inspect(a) => inspect(a)?,
        Command::Stat(a) => {
            let json = a.output_json.clone();
            let v = ops::stat::stat(&resolve::stat(a)?)?;
            let text = serde_json::to_string_pretty(&v)?;
            match json {
                Some(p) => write_atomic(&p, text.as_bytes())?,
                None => outln!("{text}"),
            }
        }
        Command::BenchBound {
            source,
            compressor,
            threads,
            chunk_size,
        } => {
            let b = ops::bench::stage_bound(
                &source,
                compressor,
                Digester::Blake3,
                chunk_size,
                threads,
            )?;
            outln!("{}", serde_json::json!(b));
        }
        Command::BenchChunkRead {
            bootstrap,
            blobs,
            chunk,
        } => {
            let r = ops::bench::chunk_read(&bootstrap.path()?, &blobs.into(), &chunk)?;
            outln!("{}", serde_json::json!(r));
        }
        Command::ExtractBootstrap { blob, output } => {
            write_atomic(&output, &erofs_forge::read::extract_bootstrap(&blob)?)?;
        }
        Command::Optimize(a) => {
            report::optimized(&ops::optimize::optimize(&resolve::optimize(a)?)?)
        }
        Command::Convert(a) => crate::convert::run(a)?,
        Command::Compact(a) => report::compacted(&ops::compact::compact(&resolve::compact(a)?)?),
        Command::Chunkdict {
            command: ChunkdictCommand::Generate(a),
        } => report::chunkdict(&ops::chunkdict::generate(&resolve::chunkdict(a))?),
        // its own exit codes: main.rs runs it (crate::analyse::verify)
        Command::Verify(_) => unreachable!("verify is run by main"),
        Command::Report(a) => crate::analyse::report(a)?,
    }
    Ok(())
}

/// `check`: the listing, and with `-J` upstream's JSON document.
fn check(a: crate::args::CheckArgs) -> Result<()> {
    let (opts, json) = resolve::check(a)?;
    let out = ops::check::check(&opts)?;
    report::checked(&out);
    if let Some(path) = json {
        let img = &out.image;
        let blobs = img.blobs.iter().map(|b| b.id.clone()).collect();
        let doc = Report::new(
            opts.bootstrap.display().to_string(),
            blobs,
            img.version,
            img.compressor,
        );
        write_atomic(&path, doc.compact().as_bytes())?;
    }
    Ok(())
}

/// `inspect -R REQUEST`: one JSON document.
fn inspect(a: crate::args::InspectArgs) -> Result<()> {
    let boot = a.bootstrap.path()?;
    let image = erofs_forge::read::load(&boot)?.image;
    let mut v = ops::inspect::request(&image, &a.request)?;
    if let (Some(dir), true) = (&a.blob_dir, a.request.starts_with("chunk")) {
        ops::inspect::add_zran_fields(&boot, dir, &mut v)?;
    }
    // one line, as nydus-image prints it: nydus-snapshotter searches this output for
    // `"blob_id":"<hex>"`, nydusify parses it as one JSON document
    outln!("{}", serde_json::to_string(&v)?);
    Ok(())
}
