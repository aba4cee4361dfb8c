//! erofs-forge: build nydus RAFS v5/v6 (EROFS) images, and their data blobs.
//!
//! # Library API
//! The operations are in [`ops`], one module per subcommand, each taking its options and
//! returning its output (nothing is printed): [`ops::create`], [`ops::merge`], [`ops::oci`],
//! [`ops::check`], [`ops::export`], [`ops::export_compressed`], [`ops::unpack`],
//! [`ops::inspect`], [`ops::stat`], [`ops::verify`], [`ops::space`] (`report`), [`ops::dump`],
//! [`ops::bench`], and [`ops::report`] for the
//! nydus `-J` document. The model they take and return is re-exported here: a [`Tree`] of
//! [`Entry`]s and [`Inode`]s (each an [`InodeKind`]), the decoded [`Image`] with its
//! [`BlobEntry`] table (an encrypted blob's [`BlobKey`]) and [`ChunkInfo`]s, the id newtypes, [`WhiteoutSpec`], [`Prefetch`], the
//! [`Compressor`] and [`Digester`] options, and [`Error`] / [`Result`]. [`read`] loads and decodes bootstraps
//! and reads chunk data from blobs; [`staged`] cleans up temporary outputs after a signal.
//!
//! # Inside
//! Layers, bottom to top, each importing only layers below it (`cargo xtask layers`):
//! `error` → `io`, `codec` → `format` → `model` → `rafs`, `blob` → `chunk` → `source` → `ops`.
//! A source produces a [`Tree`]; the chunk pipeline cuts file data into chunks, digests,
//! deduplicates and compresses them into a blob; an encoder writes the bootstrap. Those modules
//! are private: what a user needs is re-exported above.
#![forbid(unsafe_code)]
// a type the public API hands out must be nameable: re-exported, not stranded in a private module
#![warn(unnameable_types)]
#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

mod blob;
mod chunk;
mod codec;
mod error;
mod format;
mod io;
mod model;
pub mod ops;
mod rafs;
mod registry;
mod source;

pub use codec::cipher::{BlobKey, CipherError};
pub use codec::{Compressor, Digester};
pub use error::{Error, Result};
pub use format::blob::BlobFeatures;
pub use format::rafs_v6::{super_flags, SuperFlags};
pub use model::overlay::WhiteoutSpec;
pub use model::prefetch::{Prefetch, PrefetchPolicy};
pub use model::{
    BlobEntry, BlobRefs, ChunkId, ChunkInfo, DataSource, Entry, EntryId, FileType, Image, Inode,
    InodeId, InodeKind, RegularFile, Tree,
};
pub use registry::{ImageRef, Observer, Transfer, Transport, Unobserved};
pub use source::limits::{SourceLimits, DEFAULT_MAX_DECOMPRESS_MEMORY, DEFAULT_MAX_ENTRIES};
pub use source::oci::Platform;

/// Reading images: bootstraps (ours and upstream's, v5 and v6, plain or inlined at the end of a
/// blob) decoded into an [`Image`], and chunk data read back from its blobs.
pub mod read {
    pub use crate::blob::inline::extract_bootstrap;
    pub use crate::blob::reader::{BlobSource, ChunkReader};
    pub use crate::ops::opened::OpenedImage;
    /// What upstream's nydusd makes of a bootstrap when it loads it: the blob files it looks
    /// up, and the rules a bootstrap must keep to be served (formats/blob.md §12).
    pub use crate::rafs::nydusd;
    pub use crate::rafs::{decode, load, read_bootstrap, Loaded};
}

/// Temporary outputs: every operation writes its outputs beside their final paths and renames
/// them into place at the end. A program that catches a signal sets [`staged::interrupted`]
/// in its handler (no rename starts after it) and calls [`staged::remove_all`] before exiting
/// so that none is left behind; one that watches its consumers polls [`staged::gone_stream`];
/// [`staged::claim_exit`] keeps two threads from both reporting the end.
pub mod staged {
    pub use crate::io::staged::{
        claim_exit, gone_stream, interrupted, remove_all, write_atomic, write_together,
    };
}

/// Internal parsers and on-disk constants the fuzz targets (`fuzz/`) and the tests drive
/// directly. Not a stable API: anything here may change or go without notice.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::blob::inline::{bootstrap_range, parse_tar_header};
    pub use crate::blob::reader::{decode_blob_meta, decode_ci_array, BatchSlot, CiEntry};
    pub use crate::format::blob::{BLOB_META_HEADER_SIZE, BLOB_META_MAGIC};
    pub use crate::format::rafs_v5::{RAFS_V5_MAGIC, RAFS_V5_VERSION};
    pub use crate::format::rafs_v6::EROFS_MAGIC;
    pub use crate::source::tar::{read_tar, DataLocation, FileData};
    // parsers added since (issue 18): blob ToC, zran meta, eStargz/targz layer scan, encrypted
    // chunk info, OCI documents
    pub use crate::blob::inline::{extract_bootstrap_from, toc_bootstrap_entry};
    pub use crate::blob::reader::decrypt_chunk;
    pub use crate::blob::zran::{encode_meta, gzip_header_len, inflate_span};
    pub use crate::blob::zran::{EncodedMeta, InflateError, ZranChunk, ZranMeta};
    pub use crate::format::blob::{BlobMetaHeader, TocEntry};
    pub use crate::format::zran::ZranContext;
    pub use crate::ops::targz_ref::{scan_layer, ScannedLayer};
    pub use crate::source::oci::{open_image, Image as OciImage, Layer as OciLayer, Platform};
    pub use crate::source::oci::{RemoteFiles as OciRemoteFiles, Store as OciStore};
}
