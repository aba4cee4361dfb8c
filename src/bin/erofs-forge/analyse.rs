//! `verify` and `report`: their arguments, the library call and what they print, kept apart
//! from the nydus-image commands (their exit codes are their own: `verify` exits 0 equal,
//! 1 different, 2 could not compare).

use std::path::PathBuf;
use std::process::ExitCode;

use erofs_forge::ops::verify::{self, Difference, Field, SourceKind, VerifyOptions};
use erofs_forge::staged::write_atomic;

use crate::args::BlobArgs;

/// `verify IMAGE SOURCE`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image: a bootstrap (with -D or -b), a blob with an inlined bootstrap, an
    /// `export --block` image, or an OCI image layout written by `create -t oci`.
    pub image: PathBuf,
    /// The source: a directory, a tar (plain, gzip, zstd, xz; `-` for standard input) or an
    /// OCI image (layout, OCI archive, `docker save` tar; `PATH:REF` picks one).
    pub source: PathBuf,
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// How to read the source: dir, tar or oci (default: told from what it is).
    #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<SourceKind>()))]
    pub source_type: Option<SourceKind>,
    /// OCI source: the image to take from an index, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Fields not to compare, comma-separated: mtime, owner (uid and gid), uid, gid, mode,
    /// xattr, hardlinks, content, size, target, rdev, type.
    #[arg(long, value_delimiter = ',')]
    pub ignore: Vec<String>,
    /// Write every difference, typed, as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
}

/// Runs `verify`; prints the verdict, then the differences like `diff -r` with metadata.
pub fn verify(a: VerifyArgs) -> ExitCode {
    match run_verify(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: could not compare: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_verify(a: VerifyArgs) -> anyhow::Result<bool> {
    let mut ignore = Vec::new();
    for name in &a.ignore {
        ignore.extend(Field::parse_list(name)?);
    }
    let opts = VerifyOptions {
        image: a.image,
        blobs: a.blobs.into(),
        source: a.source,
        source_kind: a.source_type,
        platform: a.platform,
        ignore,
    };
    let r = verify::verify(&opts)?;
    if let Some(p) = &a.output_json {
        let mut doc = serde_json::to_value(&r)?;
        doc["verdict"] = (if r.equal() { "equal" } else { "different" }).into();
        write_atomic(p, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    println!("{}", r.verdict());
    for d in &r.differences {
        println!("{}", line(d));
    }
    Ok(r.equal())
}

/// One difference, `diff -r` style: `-` only in the source, `+` only in the image, `~` changed.
fn line(d: &Difference) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    match d {
        Difference::Missing { path } => format!("- {path}  (missing from the image)"),
        Difference::Extra { path } => format!("+ {path}  (extra in the image)"),
        Difference::Changed {
            path,
            field,
            xattr,
            image,
            source,
        } => {
            let what = match xattr {
                Some(n) => format!("xattr {n}"),
                None => field.name().to_string(),
            };
            format!(
                "~ {path}  {what}: image {} / source {}",
                show(image),
                show(source)
            )
        }
    }
}
