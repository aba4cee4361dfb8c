//! One module per subcommand: orchestration only.

pub mod create;
