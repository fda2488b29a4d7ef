//! Container images: the store and safe layer unpacking.

pub mod store;
pub mod unpack;
