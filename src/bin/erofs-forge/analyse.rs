//! `verify` and `report`: their arguments, the library call and what they print, kept apart
//! from the nydus-image commands (their exit codes are their own: `verify` exits 0 equal,
//! 1 different, 2 could not compare).

use crate::out::{out, outln};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use erofs_forge::ops::space::{self, Sizes, SpaceReport};
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
            eprintln!(
                "error: could not compare: {}",
                crate::report::error_line(&e)
            );
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
    outln!("{}", r.verdict());
    for d in &r.differences {
        outln!("{}", line(d));
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

/// `report IMAGE [IMAGE2]`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The image's bootstrap (or a blob with an inlined bootstrap).
    pub image: PathBuf,
    /// Another version of the image (its bootstrap): chunks it reuses, bytes a pull transfers.
    pub other: Option<PathBuf>,
    /// Where the image's blobs are (for the what-if table).
    #[command(flatten)]
    pub blobs: BlobArgs,
    /// How many files the top list shows.
    #[arg(long, default_value = "20")]
    pub top: usize,
    /// Write the report as JSON.
    #[arg(short = 'J', long)]
    pub output_json: Option<PathBuf>,
    /// Write one self-contained HTML page: a zoomable treemap of stored bytes.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
}

/// Runs `report`: prints the tables (and writes the JSON).
pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let opts = space::SpaceOptions {
        image: a.image,
        blobs: a.blobs.into(),
        other: a.other,
        top: a.top,
    };
    let r = space::space(&opts)?;
    let json = match &a.output_json {
        Some(_) => serde_json::to_string_pretty(&r)?,
        None => String::new(),
    };
    let html = a.html.as_ref().map(|_| r.html()).unwrap_or_default();
    let mut files: Vec<(&Path, &[u8])> = Vec::new();
    if let Some(p) = &a.output_json {
        files.push((p, json.as_bytes()));
    }
    if let Some(p) = &a.html {
        files.push((p, html.as_bytes()));
    }
    erofs_forge::staged::write_together(&files)?;
    out!("{}", report_text(&r));
    Ok(())
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn ratio(logical: u64, stored: u64) -> String {
    if stored == 0 {
        "-".into()
    } else {
        format!("{:.2}", logical as f64 / stored as f64)
    }
}

fn sizes_row(name: &str, s: &Sizes, total: u64) -> String {
    format!(
        "{:>7} {:>14} {:>14} {:>6} {:>7} {:>8} {:>8}  {name}\n",
        s.files,
        s.logical,
        s.stored,
        ratio(s.logical, s.stored),
        pct(s.stored, total),
        s.shared_in_image,
        s.shared_with_other_blobs
    )
}

const HEADER: &str = "  files  logical bytes   stored bytes  ratio  stored   shared other-blob";

fn report_text(r: &SpaceReport) -> String {
    let mut t = format!(
        "image {} (v{}, {}, chunk size {:#x}, {} blobs, {} chunks)\n\n",
        r.image, r.fs_version, r.compressor, r.chunk_size, r.blobs, r.chunks
    );
    let total = r.total.stored;
    t += &format!("{HEADER}  directory\n");
    t += &sizes_row("/ (total)", &r.total, total);
    for c in &r.tree.children {
        t += &sizes_row(&format!("/{}", c.name), &c.sizes, total);
    }
    t += &format!("\n{HEADER}  top {} files\n", r.top.len());
    for e in &r.top {
        t += &sizes_row(&e.path, &e.sizes, total);
    }
    t += &format!("\n{HEADER}  file type\n");
    let mut types: Vec<(&String, &Sizes)> = r.by_type.iter().collect();
    types.sort_by_key(|(_, s)| std::cmp::Reverse(s.stored));
    for (ext, s) in types.iter().take(20) {
        t += &sizes_row(ext, s, total);
    }
    if r.what_if.is_empty() {
        t += &format!(
            "\nwhat-if: skipped, {}\n",
            r.what_if_skipped.as_deref().unwrap_or("")
        );
    } else {
        t += &format!(
            "\n{:>14} {:>11} {:>18}  what-if\n",
            "unique bytes", "dedup ratio", "stored (~ sampled)"
        );
        for w in &r.what_if {
            let est = match w.estimated_stored {
                Some(e) if w.from_sample => format!("~{e}"),
                Some(e) => e.to_string(),
                None => String::new(),
            };
            t += &format!(
                "{:>14} {:>11.3} {:>18}  {}\n",
                w.unique_bytes, w.dedup_ratio, est, w.setting
            );
        }
    }
    if let Some(v) = &r.versus {
        t += &format!(
            "\nagainst {}: {} chunks reused ({} stored bytes), {} new; a pull transfers {} bytes of new chunks ({} bytes as whole new blobs)\n",
            v.image, v.reused_chunks, v.reused_stored, v.new_chunks, v.pull_bytes_chunks, v.pull_bytes_blobs
        );
    }
    t
}
