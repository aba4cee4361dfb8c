//! I/O helpers below every format: staged outputs with signal cleanup, named stop points for
//! tests, and a bounds-checked bytes reader for decoders.

pub mod bytes;
pub mod failpoint;
pub mod staged;
