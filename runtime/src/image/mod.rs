//! Container images.

pub mod unpack;
