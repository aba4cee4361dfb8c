//! Data blobs: chunk data, blob meta, framing, blob cache files (formats/blob.md).

pub mod copy;
pub mod inline;
pub mod reader;
pub mod writer;
pub mod zran;

pub use writer::{BlobWriter, BlobWriterOptions, WrittenBlob};
