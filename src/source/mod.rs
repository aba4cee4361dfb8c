//! Sources: each turns its input into a [`crate::model::Tree`].

pub mod dir;
pub mod limits;
pub mod oci;
pub mod tar;
