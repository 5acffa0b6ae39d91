//! The client side.

pub mod cli;
pub mod pinning;
pub mod verify;
