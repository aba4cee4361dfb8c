//! The in-memory model every source produces and every encoder consumes: the tree and the
//! overlay rules that merge trees.

pub mod overlay;
pub mod tree;

pub use tree::*;
