//! Container images: the store, safe layer unpacking, and what `images` shows.

pub mod pull;
pub mod store;
pub mod unpack;
pub mod view;
