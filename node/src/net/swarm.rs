//! Starting the network: build the Swarm, bind the listen addresses, start the tasks.
//!
//! [`spawn`] returns only once every listen address is bound (so `/tcp/0` callers learn their
//! port) and before any bootstrap peer is dialed. It starts two long-lived tasks on the node's
//! `TaskTracker`, both ending on the node's `CancellationToken`: the event loop that owns the
//! Swarm, and the blob server's accept loop (whose per-stream tasks are tracked too).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, SwarmBuilder, noise, tcp, yamux};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event_loop::EventLoop;
use super::{BlobSource, Client, Config, NetError, RecordValidator, behaviour::Behaviour, serve};
use crate::records::identity::Identity;

/// Commands queued for the swarm task before callers wait.
pub const COMMAND_QUEUE: usize = 256;

/// How long binding all listen addresses may take.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no open stream is closed after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Inbound streams negotiating their protocol at once, per connection.
pub const MAX_NEGOTIATING_INBOUND_STREAMS: usize = 64;

/// Starts the network. Returns the client and the addresses actually bound.
pub async fn spawn(
    config: Config,
    identity: &Identity,
    blobs: Arc<dyn BlobSource>,
    validator: Arc<dyn RecordValidator>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Result<(Client, Vec<Multiaddr>), NetError> {
    config.check()?;
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let mut swarm = SwarmBuilder::with_existing_identity(identity.to_libp2p())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        // Bootstrap addresses may name hosts (/dns4/...): resolve them with the system resolver.
        .with_dns()
        .map_err(|e| setup(&e))?
        // The relay client is a transport too: it dials and listens on `/p2p-circuit` addresses.
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| Behaviour::new(key, relay_client, &config))
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS)
        })
        .build();

    let mut waiting = HashSet::new();
    for addr in &config.listen {
        probe_port(addr)?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        waiting.insert(id);
    }
    let mut bound = Vec::new();
    let bind = async {
        while !waiting.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    waiting.remove(&listener_id);
                    bound.push(address);
                }
                SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                }
                | SwarmEvent::ListenerError { error, .. } => {
                    return Err(NetError::Listen {
                        addr: "(listener)".into(),
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(LISTEN_TIMEOUT, bind)
        .await
        .map_err(|_| NetError::Listen {
            addr: format!("{:?}", config.listen),
            reason: "no address bound in time".into(),
        })??;
    tracing::info!(peer = %swarm.local_peer_id(), addrs = ?bound, "p2p listening");

    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }

    let mut control = swarm.behaviour().stream.new_control();
    super::record_ids::start(
        &mut control,
        blobs.clone(),
        config.limits.stall_timeout,
        &tracker,
        cancel.clone(),
    )?;
    serve::start(
        &mut control,
        blobs,
        &config.limits,
        config.metrics.clone(),
        &tracker,
        cancel.clone(),
    )?;

    let local = *swarm.local_peer_id();
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let rtts = super::Rtts::default();
    let mut event_loop = EventLoop::new(
        swarm,
        rx,
        validator,
        config.limits.clone(),
        config.metrics.clone(),
        cancel,
        rtts.clone(),
    );
    event_loop.manage_reach(super::event_loop::ReachPolicy::of(&config));
    event_loop.bootstrap_from(config.bootstrap.clone());
    tracker.spawn(event_loop.run());
    Ok((Client::new(tx, control, local, &config.limits, rtts), bound))
}

/// Fails if `addr` names a fixed TCP or UDP port that something already holds.
///
/// libp2p-tcp sets SO_REUSEPORT on every listening socket, so a second node started on a busy
/// port would bind "successfully" and the kernel would split incoming connections between the
/// two. A plain bind (no SO_REUSEPORT) first fails the way an operator expects.
fn probe_port(addr: &Multiaddr) -> Result<(), NetError> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let bound = match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port)).map(drop),
        Some(Protocol::Udp(port)) if port != 0 => std::net::UdpSocket::bind((ip, port)).map(drop),
        _ => return Ok(()),
    };
    bound.map_err(|e| NetError::Listen {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}
