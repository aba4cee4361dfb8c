//! One module per subcommand: orchestration only.

pub mod check;
pub mod create;
pub mod export;
pub mod inspect;
pub mod merge;
pub mod oci;
pub mod stat;
pub mod unpack;
