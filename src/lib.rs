//! erofs-forge: build nydus RAFS v6 (EROFS) images, and their data blobs, from directories.
//!
//! Data flow: a source ([`source`]) produces a [`tree::Tree`]; the chunk pipeline
//! ([`chunk::pipeline`]) cuts file data into chunks, digests, deduplicates and compresses them
//! into a blob ([`blob`]); an encoder ([`rafs::v6`]) writes the bootstrap. Commands live in
//! [`cmd`].
#![forbid(unsafe_code)]

pub mod blob;
pub mod chunk;
pub mod cmd;
pub mod error;
pub mod rafs;
pub mod source;
pub mod tempfiles;
pub mod tree;

pub use error::{Error, Result};
