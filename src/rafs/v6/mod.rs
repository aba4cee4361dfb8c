//! RAFS v6: a bootstrap that is an EROFS filesystem (formats/rafs-v6.md).

pub mod decode;
pub mod encode;
pub mod layout;
pub mod zmap;

pub use encode::{encode, EncodeOptions};
