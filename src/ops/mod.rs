//! One module per subcommand: orchestration only. Each operation takes its options and returns
//! its output; nothing here prints.

pub mod bench;
pub mod check;
pub mod chunkdict;
pub mod compact;
pub mod convert;
pub mod create;
pub mod dump;
pub mod export;
pub mod export_compressed;
pub mod inspect;
pub mod merge;
pub mod mkfs;
pub mod oci;
pub(crate) mod opened;
pub mod optimize;
pub(crate) mod paths;
pub mod report;
pub mod space;
pub mod stat;
pub(crate) mod targz_ref;
pub mod unpack;
pub mod verify;
