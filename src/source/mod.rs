//! Sources: each turns its input into a [`crate::tree::Tree`].

pub mod dir;
pub mod oci;
pub mod tar;
