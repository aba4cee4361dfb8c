//! Codecs: chunk compression, chunk digests and chunk encryption.

pub mod cipher;
pub mod compress;
pub mod digest;

pub use compress::Compressor;
pub use digest::Digester;
