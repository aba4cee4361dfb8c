//! erofs-forge: build nydus RAFS v5/v6 (EROFS) images, and their data blobs.
//!
//! Layers, bottom to top, each importing only layers below it (`cargo xtask layers`):
//! [`error`] → [`io`], [`codec`] → [`format`] → [`model`] → [`rafs`], [`blob`] → [`chunk`] →
//! [`source`] → [`ops`]. A source produces a [`model::Tree`]; the chunk pipeline
//! ([`chunk::pipeline`]) cuts file data into chunks, digests, deduplicates and compresses them
//! into a blob ([`blob`]); an encoder ([`rafs`]) writes the bootstrap. Operations live in [`ops`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod blob;
pub mod chunk;
pub mod codec;
pub mod error;
pub mod format;
pub mod io;
pub mod model;
pub mod ops;
pub mod rafs;
pub mod source;

pub use error::{Error, Result};
