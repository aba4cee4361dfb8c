//! One module per subcommand: orchestration only.

pub mod bench;
pub mod check;
pub mod create;
pub mod dump;
pub mod export;
pub mod export_compressed;
pub mod inspect;
pub mod merge;
pub mod oci;
pub mod opened;
pub mod paths;
pub mod report;
pub mod stat;
pub mod unpack;
