//! Background tasks.

pub mod gossip;
pub mod sync;
