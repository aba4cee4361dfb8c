//! RAFS bootstrap encoders (and, later, decoders).

pub mod v6;
