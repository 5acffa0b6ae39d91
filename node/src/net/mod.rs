//! Peer-to-peer networking (being built).
