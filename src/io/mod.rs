//! I/O helpers below every format: staged outputs with signal cleanup, and a bounds-checked
//! bytes reader for decoders.

pub mod bytes;
pub mod staged;
