//! Codecs: chunk compression and chunk digests.

pub mod compress;
pub mod digest;

pub use compress::Compressor;
pub use digest::Digester;
