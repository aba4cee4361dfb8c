//! The command-line tests, one crate (one binary to link) with a module per area. Tests that
//! need root, the kernel's EROFS or an outside tool carry `cfg_attr(no_..., ignore)` from
//! `build.rs`, so cargo's summary counts them as ignored where they cannot run.

// test scratch directories need no signal cleanup (the library's staged outputs do)
#![allow(clippy::disallowed_methods)]

mod bad_input;
mod batch;
mod blob_toc;
mod chunkdict;
mod clients;
mod common;
mod compact;
mod concurrent;
mod consumer;
mod convert;
mod converter;
mod corrupt;
mod dump;
mod encrypt;
mod estargz;
mod export;
mod fault_proxy;
pub(crate) mod fifo;
mod fuzz_regressions;
mod golden;
mod kernel_mount;
mod layers;
mod memory;
mod mkfs;
mod oci_layers;
mod optimize;
mod options;
mod prefetch;
mod registry;
mod reliability;
mod report;
mod reproducible;
mod roundtrip;
mod signals;
mod tar;
mod targz_ref;
mod umoci_image;
mod upstream_compat;
mod upstream_read;
mod verify;
