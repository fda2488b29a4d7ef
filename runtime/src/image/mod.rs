//! Container images: the store and safe layer unpacking.

pub mod pull;
pub mod store;
pub mod unpack;
