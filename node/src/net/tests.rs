//! Multi-node tests on loopback.
