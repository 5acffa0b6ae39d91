//! Gossipsub: signed announcements that every interested node should hear about soon.
//!
//! Five topics: new signed record pointers ([`RECORDS_TOPIC`]), so nodes that cache a package
//! learn of a new revision without polling anyone; signed popularity summaries
//! ([`POPULARITY_TOPIC`]); and the network's public operation, signed node reports
//! ([`REPORTS_TOPIC`]) and operator statements ([`STATEMENTS_TOPIC`]); and signed advisories ([`ADVISORIES_TOPIC`]). Messages are signed by the sending peer's key (libp2p's
//! `MessageAuthenticity::Signed`, strict validation) and capped at [`MAX_MESSAGE`] bytes; what
//! they say is verified again by the node (the payloads are signed by operators). A subscriber
//! gets a bounded channel; when it falls behind, messages are dropped, never queued without end.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;

use super::NetError;

/// New record pointers.
pub const RECORDS_TOPIC: &str = "/open-registry/records/1";
/// Popularity summaries.
pub const POPULARITY_TOPIC: &str = "/open-registry/popularity/1";
/// Signed node reports.
pub const REPORTS_TOPIC: &str = "/open-registry/reports/1";
/// Signed operator statements.
pub const STATEMENTS_TOPIC: &str = "/open-registry/statements/1";
/// Signed advisories (takedowns and their withdrawals).
pub const ADVISORIES_TOPIC: &str = "/open-registry/advisories/1";
/// The largest message sent or accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Messages buffered for a subscriber before new ones are dropped.
pub const SUBSCRIBER_QUEUE: usize = 256;
/// Gossipsub's heartbeat (mesh maintenance).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A message received on a topic.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic it arrived on.
    pub topic: String,
    /// The peer that signed it (the originator, not the relay).
    pub source: Option<PeerId>,
    /// The payload.
    pub data: Vec<u8>,
}

/// Gossipsub configured for our messages.
pub(crate) fn behaviour(key: &Keypair) -> gossipsub::Behaviour {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(HEARTBEAT)
        .validation_mode(ValidationMode::Strict)
        .max_transmit_size(MAX_MESSAGE)
        // Small networks (a handful of nodes) are normal here: publish to every subscribed
        // peer, not only the mesh.
        .flood_publish(true)
        .build()
        .expect("static gossipsub config is valid");
    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .expect("signed gossipsub with a valid config")
}

/// The topic of a name.
pub(crate) fn topic(name: &str) -> IdentTopic {
    IdentTopic::new(name)
}

/// Maps a publish failure to our error (no subscribed peer yet is not fatal for callers).
pub(crate) fn publish_error(e: gossipsub::PublishError) -> NetError {
    NetError::Gossip(e.to_string())
}
