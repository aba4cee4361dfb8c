//! What the commands print, and the progress bar: nydus-image's wording where clients parse it.

use crate::out::outln;
use std::io::IsTerminal;
use std::path::Path;

use erofs_forge::ops::create::{CreateOutput, Progress};
use erofs_forge::ops::oci::OciOutput;
use erofs_forge::ops::{check, export, merge};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on a terminal's stderr; nothing otherwise (logs and pipes stay clean).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar if stderr is a terminal.
    pub fn for_stderr() -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar(Some(b))
    }

    /// Removes the bar before the result is printed.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(bytes);
            if files == 0 {
                // a tar: bytes of the input read so far (of its size, when it is a file)
                b.set_message("reading");
                if bytes == 0 {
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                }
            } else {
                b.set_message(format!("{files} files"));
            }
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
}

/// `--version`, in nydus-image's shape: acceleration-service reads the version with the regex
/// `Version:\s*(v.*)`. No build time, so that builds stay reproducible.
pub fn version() -> String {
    format!(
        " Version: \tv{}\nGit Commit: \t{}\nProfile: \t{}\nRustc: \t\t{}\n",
        env!("CARGO_PKG_VERSION"),
        env!("EROFS_FORGE_GIT_COMMIT"),
        env!("EROFS_FORGE_PROFILE"),
        env!("EROFS_FORGE_RUSTC"),
    )
}

/// `create` of one layer.
pub fn created(out: &CreateOutput) {
    let total = out.timings.get("total_build").copied().unwrap_or(0.0);
    outln!("meta blob path: {}", out.bootstrap);
    if let Some(p) = &out.blob_path {
        outln!("data blob path: {}", p.display());
    }
    outln!("data blob size: {:#x}", out.blob_size);
    outln!("data blobs: {:?}", out.blobs);
    outln!(
        "built {} entries, {} files, {} bytes of data in {} chunks ({} unique, {}) in {:.2}s ({:.1} MB/s)",
        out.entries,
        out.files,
        out.data_bytes,
        out.chunks,
        out.unique_chunks,
        out.compressor.name(),
        total,
        out.data_bytes as f64 / 1e6 / total.max(1e-9)
    );
}

/// `create -t oci`.
pub fn created_oci(out: &OciOutput, blob_cache_dir: Option<&Path>) {
    outln!("image layout: {}", out.dir.display());
    outln!(
        "source image: {} ({} layers, from {})",
        out.platform,
        out.layers,
        out.found_in
    );
    outln!("manifest: {}", out.manifest);
    outln!("config: {}", out.config);
    for b in &out.blobs {
        outln!("data blob path: {}", b.display());
    }
    outln!("bootstrap layer path: {}", out.bootstrap_layer.display());
    match &out.bootstrap {
        Some(p) => outln!("meta blob path: {}", p.display()),
        None => {
            outln!("meta blob path: (only inside the bootstrap layer; -B writes it as a file)")
        }
    }
    if let Some(c) = blob_cache_dir {
        outln!("blob cache: {}", c.display());
    }
}

/// `merge`.
pub fn merged(out: &merge::MergeOutput) {
    outln!("meta blob path: {}", out.bootstrap.display());
    outln!("data blobs: {:?}", out.blobs);
}

/// `export --block` (nydus layout), with the dm-verity parameters when asked for: first the
/// line nydus-snapshotter reads with `fmt.Sscanf(out, "dm-verity options: --no-superblock
/// --format=1 -s \"\" --hash=sha256 --data-block-size=%d --hash-block-size=4096 --data-blocks
/// %d --hash-offset %d %s\n", ...)`, exactly as nydus-image prints it (Sscanf matches from the
/// first byte, so nothing may come before it); then the rest for people.
pub fn exported_block(out: &export::ExportOutput) {
    let Some(root) = &out.root_hash else {
        outln!("block image: {}", out.path.display());
        return;
    };
    let (b, h) = (export::VERITY_DATA_BLOCK, export::VERITY_HASH_BLOCK);
    let (blocks, offset) = (out.data_blocks, out.data_size);
    outln!(
        "dm-verity options: --no-superblock --format=1 -s \"\" --hash=sha256 --data-block-size={b} --hash-block-size={h} --data-blocks {blocks} --hash-offset {offset} {root}"
    );
    outln!("block image: {}", out.path.display());
    let p = out.path.display();
    // the same parameters in a form that survives splitting at spaces (no empty argument)
    outln!(
        "veritysetup verify {p} {p} {root} --no-superblock --format=1 --hash=sha256 --salt=- --data-block-size={b} --hash-block-size={h} --data-blocks={blocks} --hash-offset={offset}"
    );
}

/// `check`: the listing, the blob table and how the data was checked.
pub fn checked(report: &check::CheckReport) {
    for line in &report.listing {
        outln!("{line}");
    }
    let img = &report.image;
    outln!("RAFS filesystem metadata is valid, referenced data blobs: ");
    for (i, b) in img.blobs.iter().enumerate() {
        outln!(
            "\t {i}: {}, compressed size {}, uncompressed size {}, chunk size: {}, chunk count: {}, features: {}",
            b.id,
            b.compressed_size,
            b.uncompressed_size,
            img.chunk_size,
            b.chunk_count,
            b.features.upstream_words().join(" ")
        );
    }
    if report.chunks_verified > 0 {
        outln!(
            "verified {} chunks against their digests",
            report.chunks_verified
        );
    }
    if report.chunks_unverified > 0 {
        outln!(
            "read {} chunks whose digests the image does not record (sizes checked)",
            report.chunks_unverified
        );
    }
}

/// `optimize`: the new blob and bootstrap (stderr, as nydus-image logs them; clients read the
/// JSON).
pub fn optimized(out: &erofs_forge::ops::optimize::OptimizeOutput) {
    eprintln!(
        "prefetch blob {}: {} chunks of {} files; bootstrap {}",
        out.blob_path.display(),
        out.chunks,
        out.files,
        out.bootstrap.display()
    );
}

/// `compact`: each original blob's use and fate, then the result (stderr, as nydus-image logs
/// it; nydusify looks for the output bootstrap).
pub fn compacted(out: &erofs_forge::ops::compact::CompactOutput) {
    for (b, u) in &out.before {
        eprintln!(
            "blob {}: {} bytes, {} used ({}%): {:?}",
            b.id,
            b.compressed_size,
            u.used,
            (u.used * 100).checked_div(b.compressed_size).unwrap_or(100),
            u.fate
        );
    }
    for (id, size) in &out.new_blobs {
        eprintln!("new blob {id}: {size} bytes");
    }
    match &out.bootstrap {
        Some(p) => eprintln!("compacted bootstrap: {}", p.display()),
        None => eprintln!("no chance to compact data blobs: nothing written"),
    }
}

/// `chunkdict generate`: the chunk counts (stderr; clients read the JSON).
pub fn chunkdict(out: &erofs_forge::ops::chunkdict::ChunkdictOutput) {
    eprintln!(
        "chunk dictionary {}: {} of {} distinct chunks ({} recorded), in {} blobs",
        out.bootstrap.display(),
        out.chosen,
        out.distinct,
        out.recorded,
        out.blobs.len()
    );
}

/// The one line an error prints after `error: `: its message, then each cause whose text the
/// line does not hold yet (the library's errors already quote their I/O cause, and anyhow's
/// `{:#}` would repeat it), with any line breaks inside a message folded into `; `, so that a
/// client reading the last stderr line gets the whole story.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(text.trim()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let parts: Vec<&str> = line
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}
