//! RAFS v5: the nydusd-only bootstrap format (formats/rafs-v5.md).

pub mod decode;
pub mod encode;
