//! Container images: the store, safe layer unpacking, and what `images` shows.

pub mod auth;
pub mod pull;
pub mod push;
pub mod registry;
pub mod store;
pub mod unpack;
pub mod view;
