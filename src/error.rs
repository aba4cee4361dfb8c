//! The library's error type: every variant names the path, entry or offset it is about.

use std::path::PathBuf;

/// Errors returned by the erofs-forge library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The disk (or quota) holding an output is full. Reported once, without the OS error as a
    /// cause, so that the message is not repeated.
    #[error("no space left on device writing {path}{}", needed.map(|n| format!(" (needed at least {n} more bytes)")).unwrap_or_default())]
    NoSpace {
        /// The output being written (its final name when known).
        path: PathBuf,
        /// Bytes that could not be written when the disk filled up.
        needed: Option<u64>,
    },
    /// The reader of a stream output (a FIFO, a pipe) went away before everything was written.
    #[error("broken pipe writing {path}")]
    BrokenPipe {
        /// The output being written.
        path: PathBuf,
    },
    /// A signal arrived: the run is being abandoned and no output is put in place.
    #[error("interrupted")]
    Interrupted,
    /// The source tree holds something the image cannot represent.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The entry concerned.
        path: PathBuf,
        /// Why it cannot be represented.
        reason: String,
    },
    /// A file changed while it was being read (its size no longer matches).
    #[error("{path}: file changed while reading (expected {expected} bytes, got {got})")]
    FileChanged {
        /// The file concerned.
        path: PathBuf,
        /// Size seen when the tree was walked.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
    /// An option value is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// On-disk input is malformed.
    #[error("{what} at offset {offset:#x}: {reason}")]
    Corrupt {
        /// The structure being parsed.
        what: &'static str,
        /// Byte offset in the input.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A tar archive entry cannot be taken into the image.
    #[error("tar entry {entry:?} at offset {offset:#x}: {reason}")]
    Tar {
        /// The entry's name as the archive spells it.
        entry: String,
        /// Offset of the entry's first header in the (uncompressed) archive.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Input does not have the digest or size its descriptor gives.
    #[error("{what}: {field} is {actual}, its descriptor says {expected}")]
    Mismatch {
        /// The input concerned (an image layer, with its file).
        what: String,
        /// What was compared (`sha256`, `size`, ...).
        field: &'static str,
        /// The value the descriptor gives.
        expected: String,
        /// The value the bytes have.
        actual: String,
    },
    /// A limit of the format was exceeded.
    #[error("format limit exceeded: {0}")]
    Limit(String),
    /// Images that cannot be stacked (merged, or used as parent or chunk dictionary) because
    /// they disagree on a setting every layer must share. nydus-image exits with code 2 for
    /// this, which acceleration-service reads as "retry without the cache".
    #[error("{what}: {reason}")]
    Incompatible {
        /// The image that does not fit, and what it was to be used as.
        what: String,
        /// The setting that differs, with both values.
        reason: String,
    },
    /// A state the code rules out happened (a worker thread panicked, an invariant broke): a
    /// bug in this tool, not in the input or the options.
    #[error("internal error: {0}")]
    Internal(String),
    /// Compression or decompression failed.
    #[error("{algo} failed: {reason}")]
    Codec {
        /// Algorithm name.
        algo: &'static str,
        /// Error text.
        reason: String,
    },
    /// A compressed input declares a window or dictionary larger than the decompression
    /// memory limit: refused before the decoder allocates it.
    #[error("{path}: the {algo} stream needs more than {} of memory to decompress (the limit); --max-decompress-memory raises it", human_bytes(*.limit))]
    DecompressMemory {
        /// The input.
        path: PathBuf,
        /// The compression (`xz`, `zstd`).
        algo: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A source has more entries than allowed.
    #[error("{path}: more than {limit} entries; --max-entries raises the limit")]
    TooManyEntries {
        /// The source.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The chunk database (`chunkdict generate --database`) could not be opened or written.
    #[error("database {path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A registry refused or failed a request (after the retries allowed).
    #[error("registry {registry}: {what}: {reason}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What was asked of it (naming the blob or manifest and the repository).
        what: String,
        /// Its answer, or why there was none.
        reason: String,
    },
    /// An error inside a named input file (a bootstrap, a blob, a tar archive) whose own
    /// message does not name the file: the file, then that error.
    #[error("{path}: {source}")]
    InFile {
        /// The input file.
        path: PathBuf,
        /// What is wrong inside it (its offset, where it has one).
        source: Box<Error>,
    },
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an I/O error means the filesystem is full (ENOSPC, or EDQUOT for a quota).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The error for a failed write of an output: [`Error::NoSpace`] when the disk is full (naming
/// `path` and the bytes still to write), [`Error::Io`] otherwise.
pub fn write_error(source: std::io::Error, path: &std::path::Path, needed: Option<u64>) -> Error {
    if source.kind() == std::io::ErrorKind::BrokenPipe {
        Error::BrokenPipe {
            path: path.to_path_buf(),
        }
    } else if is_no_space(&source) {
        Error::NoSpace {
            path: path.to_path_buf(),
            needed,
        }
    } else {
        Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `e`, naming the input file `path` unless its message already names a file.
pub fn in_file(path: &std::path::Path, e: Error) -> Error {
    match e {
        Error::Io { .. }
        | Error::NoSpace { .. }
        | Error::BrokenPipe { .. }
        | Error::Interrupted
        | Error::Unsupported { .. }
        | Error::FileChanged { .. }
        | Error::Database { .. }
        | Error::Incompatible { .. }
        | Error::Mismatch { .. }
        | Error::Internal(_)
        | Error::DecompressMemory { .. }
        | Error::TooManyEntries { .. }
        | Error::InFile { .. }
        | Error::Registry { .. } => e,
        _ => Error::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        },
    }
}

/// `bytes` for a message: in MiB (or KiB) when exact, in bytes otherwise.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Adds a path to a `std::io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| {
            // a decoder wrapper's own error (a refused window) travels through `Read` intact
            if source.get_ref().is_some_and(|e| e.is::<Error>()) {
                if let Some(Ok(inner)) = source.into_inner().map(|e| e.downcast::<Error>()) {
                    return *inner;
                }
                return Error::Internal("an error lost its payload".into());
            }
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                Error::BrokenPipe { path: path.into() }
            } else if is_no_space(&source) {
                Error::NoSpace {
                    path: path.into(),
                    needed: None,
                }
            } else {
                Error::Io {
                    op,
                    path: path.into(),
                    source,
                }
            }
        })
    }
}
