//! Bounds on what a hostile source can make the tool allocate: decompressor memory (an xz
//! dictionary or zstd window is declared by the stream, so an untrusted layer chooses it) and
//! the number of entries (each costs metadata memory for the whole build).

/// Default `--max-decompress-memory`: four times what `xz -9` (64 MiB dictionary) and
/// `zstd --long=27` / `--ultra -22` (128 MiB window) need, well below a GiB-sized declaration.
pub const DEFAULT_MAX_DECOMPRESS_MEMORY: u64 = 256 << 20;

/// Default `--max-entries`: ten million entries, a few GiB of metadata at the README's
/// per-entry bound.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;

/// The limits a source is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Most memory one decompressor may use for its window or dictionary, in bytes.
    pub decompress_memory: u64,
    /// Most entries (files, directories, links, ...) one source may have.
    pub entries: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            decompress_memory: DEFAULT_MAX_DECOMPRESS_MEMORY,
            entries: DEFAULT_MAX_ENTRIES,
        }
    }
}
