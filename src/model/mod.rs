//! The in-memory model every source produces and every encoder consumes: the tree, the
//! overlay rules that merge trees, chunk descriptors and the decoded image.

pub mod chunk;
pub mod image;
pub mod overlay;
pub mod prefetch;
pub mod stack;
pub mod tree;

pub use chunk::ChunkInfo;
pub use image::{BlobEntry, BlobRefs, Image};
pub use tree::*;
