//! Several nodes on one machine, and a peer that lies.
//!
//! - [`P2pNode`]: an `open-registry start` process ([`P2pNode::start`]) or an in-process node
//!   on a manual clock ([`P2pNode::in_process`]), with its operator id and its dialable
//!   `/ip4/127.0.0.1/tcp/PORT/p2p/ID` address (read from `GET /-/open-registry/peers`, so a
//!   port-0 listen address is resolved), and waits on its routing table.
//! - [`Holdings`]: what an honest node holds for one package, as its operator's newest signed
//!   record names it — the record's wire bytes, the packument, the tarballs — with the bytes,
//!   fetched from the node's gateway (`/-/open-registry/records/<name>` and
//!   `/-/open-registry/blobs/<cid>`). These helpers take any [`Node`].
//! - [`EvilPeer`]: a libp2p peer in this process, built from the node's own network layer
//!   (`open_registry_node::net::spawn`), that announces whatever the test tells it to and serves
//!   each blob as the test scripts it ([`Serve`]): honestly, with a flipped byte, other bytes,
//!   one byte per interval, endlessly, or half and then nothing. It runs on a tokio runtime of
//!   its own, so sync tests drive it with plain method calls; [`EvilPeer::kill`] drops the
//!   runtime, which closes its connections as a crash would.
//!
//! Everything is loopback; nothing outlives its value. With `P2P_TEST_LOGS=DIR` set, each
//! node's log is copied to `DIR/<peer id>.log` when it is dropped (its data dir is not kept).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    ops::{Deref, DerefMut},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures::future::BoxFuture;
use open_registry_node::{
    Identity, PointerValidator,
    net::{self, Blob, BlobSource, Client, Multiaddr, PeerId, RecordValidator},
};
use open_registry_protocol::{
    BlobId, PackageName, pointer,
    record::{Record, Signed},
};
use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{InProcessNode, Node, NodeProcess, fixtures::pseudo_random_bytes, probe};

// ---- nodes -------------------------------------------------------------------------------

/// `GET /-/open-registry/peers`, parsed.
pub fn peers(node: &impl Node) -> Result<Value> {
    let r = node.get("/-/open-registry/peers", &[])?;
    ensure!(
        r.status == 200,
        "{}/-/open-registry/peers answered {}: {}",
        node.gateway(),
        r.status,
        r.text()
    );
    probe::json(&r)
}

/// A node that joined the peer-to-peer network: a process, or (`P2pNode<InProcessNode>`) a
/// node in this process.
#[derive(Debug)]
pub struct P2pNode<N: Node = NodeProcess> {
    /// The node.
    pub node: N,
    /// Its operator id (= libp2p PeerId).
    pub id: String,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID`, for `--bootstrap`.
    pub addr: String,
}

impl P2pNode {
    /// Starts `open-registry start ARGS…` (loopback gateway and p2p listen addresses by default)
    /// and reads its peer id and p2p address.
    pub fn start(args: &[&str]) -> Result<P2pNode> {
        P2pNode::joined(NodeProcess::start(args)?)
    }
}

impl P2pNode<InProcessNode> {
    /// [`P2pNode::start`] with the node in this process, on a manual clock
    /// ([`InProcessNode::clock`]).
    pub fn in_process(args: &[&str]) -> Result<P2pNode<InProcessNode>> {
        P2pNode::joined(InProcessNode::start(args)?)
    }
}

impl<N: Node> P2pNode<N> {
    /// Reads a started node's peer id and p2p address (for nodes started some other way, e.g.
    /// with a prepared data dir).
    pub fn joined(node: N) -> Result<P2pNode<N>> {
        let (id, addr) = crate::sync::p2p_addr(&node)?;
        eprintln!("[p2p] node {id} at {addr}, gateway {}", node.gateway());
        Ok(P2pNode { node, id, addr })
    }

    /// The routing table's size now.
    pub fn routing_table(&self) -> Result<u64> {
        peers(&self.node)?["routing_table_size"]
            .as_u64()
            .ok_or_else(|| anyhow!("no routing_table_size"))
    }

    /// Waits until the routing table holds at least `n` peers.
    pub fn wait_routing_table(&self, n: u64, timeout: Duration) -> Result<()> {
        probe::wait_for(
            timeout,
            &format!("{}'s routing table to hold {n} peers", self.id),
            || self.routing_table().ok().filter(|&s| s >= n),
        )
        .map(drop)
    }
}

/// With `P2P_TEST_LOGS=DIR` in the environment, every node's log is kept as `DIR/<id>.log`
/// (the data dir, and the log in it, go away with the node).
impl<N: Node> Drop for P2pNode<N> {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("P2P_TEST_LOGS") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(self.node.log_path(), dir.join(format!("{}.log", self.id)));
        }
    }
}

impl<N: Node> Deref for P2pNode<N> {
    type Target = N;
    fn deref(&self) -> &N {
        &self.node
    }
}

impl<N: Node> DerefMut for P2pNode<N> {
    fn deref_mut(&mut self) -> &mut N {
        &mut self.node
    }
}

impl<N: Node> Node for P2pNode<N> {
    fn gateway(&self) -> &str {
        self.node.gateway()
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.node.log_path()
    }
}

// ---- what a node holds -------------------------------------------------------------------

/// What a node holds for one package, per its operator's newest record, with the bytes.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// The package.
    pub name: PackageName,
    /// The operator's newest record, as it travels.
    pub signed: Signed,
    /// The same record, verified.
    pub record: Record,
    /// The blob id of the record's wire bytes (what the operator's DHT pointer names).
    pub record_id: BlobId,
    /// The packument revision the record names, with its bytes.
    pub packument: (BlobId, Bytes),
    /// Version → tarball id and bytes, for every version whose tarball the record names.
    pub tarballs: BTreeMap<String, (BlobId, Bytes)>,
}

impl Holdings {
    /// Reads `name`'s newest record signed by `operator` from `node`, and every blob it names.
    pub fn read(node: &impl Node, operator: &str, name: &str) -> Result<Holdings> {
        let signed = operator_record(node, operator, name)?;
        let record = signed.verify()?.get().clone();
        let packument = (record.packument, blob(node, &record.packument)?);
        let mut tarballs = BTreeMap::new();
        for (version, e) in &record.versions {
            if let Some(id) = e.tarball {
                tarballs.insert(version.clone(), (id, blob(node, &id)?));
            }
        }
        Ok(Holdings {
            name: record.name.clone(),
            record_id: BlobId::of(&signed.to_bytes()),
            signed,
            record,
            packument,
            tarballs,
        })
    }

    /// The tarball of `version`.
    pub fn tarball(&self, version: &str) -> Result<&(BlobId, Bytes)> {
        self.tarballs
            .get(version)
            .ok_or_else(|| anyhow!("{}'s record names no tarball for {version}", self.name))
    }
}

/// The signed records `node` serves for `name` (`GET /-/open-registry/records/<name>`).
pub fn records(node: &impl Node, name: &str) -> Result<Vec<Signed>> {
    let r = node.get(&format!("/-/open-registry/records/{name}"), &[])?;
    ensure!(
        r.status == 200,
        "records of {name} answered {}: {}",
        r.status,
        r.text()
    );
    let v = probe::json(&r)?;
    v["records"]
        .as_array()
        .ok_or_else(|| anyhow!("no records array: {v}"))?
        .iter()
        .map(|j| Signed::from_json(j).map_err(|e| anyhow!("{e}: {j}")))
        .collect()
}

/// The record of `operator` for `name` that `node` serves, signature checked.
pub fn operator_record(node: &impl Node, operator: &str, name: &str) -> Result<Signed> {
    let signed = records(node, name)?
        .into_iter()
        .find(|s| s.signer.to_string() == operator)
        .ok_or_else(|| {
            anyhow!(
                "{} serves no record of {operator} for {name}",
                node.gateway()
            )
        })?;
    signed
        .verify()
        .with_context(|| format!("{operator}'s record for {name}"))?;
    Ok(signed)
}

/// A blob from `node`'s gateway, checked against its id.
pub fn blob(node: &impl Node, id: &BlobId) -> Result<Bytes> {
    let r = node.get(&format!("/-/open-registry/blobs/{id}"), &[])?;
    ensure!(
        r.status == 200,
        "blob {id} answered {}: {}",
        r.status,
        r.text()
    );
    ensure!(BlobId::of(&r.body) == *id, "blob {id}: the bytes differ");
    Ok(Bytes::from(r.body))
}

// ---- the lying peer ----------------------------------------------------------------------

/// How the evil peer serves one blob.
#[derive(Debug, Clone)]
pub enum Serve {
    /// The true bytes.
    Honest,
    /// The true length, with the byte in the middle flipped.
    FlipByte,
    /// These bytes instead (any length).
    Instead(Bytes),
    /// The true length announced, one byte per interval.
    Trickle(Duration),
    /// `announced` bytes announced; pseudo-random bytes sent without end, `chunk` bytes every
    /// `every`.
    Endless {
        /// The length in the response header.
        announced: u64,
        /// Bytes per step.
        chunk: usize,
        /// Time between steps.
        every: Duration,
    },
    /// The first request among every peer sharing the tripwire gets the true length announced,
    /// the first half of the bytes, and then nothing, ever; later requests get the true bytes.
    HangOnce(Arc<Tripwire>),
}

/// Shared by peers serving [`Serve::HangOnce`]: which of them hung, and whether it sent its half.
#[derive(Debug)]
pub struct Tripwire {
    armed: AtomicBool,
    tripped: Mutex<Option<PeerId>>,
    half_sent: AtomicBool,
}

impl Tripwire {
    /// An armed tripwire.
    pub fn new() -> Arc<Tripwire> {
        Arc::new(Tripwire {
            armed: AtomicBool::new(true),
            tripped: Mutex::new(None),
            half_sent: AtomicBool::new(false),
        })
    }

    /// The peer that hung, once one has handed over its half.
    pub fn hung(&self) -> Option<PeerId> {
        if self.half_sent.load(Ordering::SeqCst) {
            *lock(&self.tripped)
        } else {
            None
        }
    }
}

/// Blobs the evil peer serves, each with its script, and how often each was asked for.
#[derive(Debug)]
struct LyingSource {
    me: PeerId,
    blobs: Mutex<HashMap<BlobId, (Bytes, Serve)>>,
    opens: Mutex<HashMap<BlobId, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlobSource for LyingSource {
    fn open<'a>(&'a self, id: &'a BlobId, offset: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        *lock(&self.opens).entry(*id).or_default() += 1;
        let entry = lock(&self.blobs).get(id).cloned();
        let me = self.me;
        Box::pin(async move {
            let Some((bytes, serve)) = entry else {
                return Ok(None);
            };
            let len = bytes.len() as u64;
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let blob = match serve {
                Serve::Honest => Blob::from_bytes(bytes, offset),
                Serve::FlipByte => {
                    let mut v = bytes.to_vec();
                    let mid = v.len() / 2;
                    v[mid] ^= 0x01;
                    Blob::from_bytes(v.into(), offset)
                }
                Serve::Instead(other) => Blob::from_bytes(other, offset),
                Serve::Trickle(every) => Blob {
                    len,
                    reader: Box::new(Paced::new(bytes.slice(at..), 1, every)),
                },
                Serve::Endless {
                    announced,
                    chunk,
                    every,
                } => Blob {
                    len: announced,
                    reader: Box::new(Paced::endless(chunk, every)),
                },
                Serve::HangOnce(wire) => {
                    if wire.armed.swap(false, Ordering::SeqCst) {
                        *lock(&wire.tripped) = Some(me);
                        let half = bytes.slice(at..(bytes.len() / 2).max(at));
                        Blob {
                            len,
                            reader: Box::new(HalfThenHang { half, pos: 0, wire }),
                        }
                    } else {
                        Blob::from_bytes(bytes, offset)
                    }
                }
            };
            Ok(Some(blob))
        })
    }
}

/// Bytes at a pace: `chunk` bytes every `every`, from `data` or, without data, for ever.
struct Paced {
    data: Option<Bytes>,
    pos: usize,
    chunk: usize,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    noise: Vec<u8>,
}

impl Paced {
    fn new(data: Bytes, chunk: usize, every: Duration) -> Paced {
        Paced {
            data: Some(data),
            pos: 0,
            chunk,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
            noise: Vec::new(),
        }
    }

    fn endless(chunk: usize, every: Duration) -> Paced {
        Paced {
            data: None,
            noise: pseudo_random_bytes(0xe71, chunk),
            ..Paced::new(Bytes::new(), chunk, every)
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.data.as_ref().is_some_and(|d| self.pos >= d.len()) {
            return Poll::Ready(Ok(()));
        }
        futures::ready!(self.sleep.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        let this = &mut *self;
        let n = this.chunk.min(buf.remaining());
        match &this.data {
            Some(d) => {
                let n = n.min(d.len() - this.pos);
                buf.put_slice(&d[this.pos..this.pos + n]);
                this.pos += n;
            }
            None => buf.put_slice(&this.noise[..n]),
        }
        Poll::Ready(Ok(()))
    }
}

/// The first half of a blob, then a read that never completes.
struct HalfThenHang {
    half: Bytes,
    pos: usize,
    wire: Arc<Tripwire>,
}

impl AsyncRead for HalfThenHang {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos >= self.half.len() {
            self.wire.half_sent.store(true, Ordering::SeqCst);
            // Never woken: the serving task waits until the peer dies.
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.half.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.half[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Which DHT values the evil peer stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Valid pointers only, the newer of two kept (what an honest node does).
    Pointers,
    /// Anything, the last one put kept (a liar's store).
    Anything,
}

/// Accepts every value and always lets the new one replace the old.
struct AcceptAll;

impl RecordValidator for AcceptAll {
    fn validate(&self, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// A libp2p peer of our network in this process, serving blobs as scripted.
pub struct EvilPeer {
    /// Its peer id.
    pub peer: PeerId,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID`.
    pub addr: String,
    /// Its key (it signs forgeries with it).
    pub identity: Identity,
    client: Client,
    source: Arc<LyingSource>,
    cancel: CancellationToken,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EvilPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvilPeer")
            .field("peer", &self.peer)
            .field("addr", &self.addr)
            .finish()
    }
}

/// How long a DHT call of the evil peer may take.
const DHT_DEADLINE: Duration = Duration::from_secs(5);

impl EvilPeer {
    /// Starts a peer with the key made from `seed`, on `127.0.0.1:0`, dialing `bootstrap`
    /// (`…/p2p/ID` addresses). Its own serving deadlines are long, so that what cuts a slow
    /// transfer off is the fetching node's deadline, never the liar's.
    pub fn start(seed: u8, bootstrap: &[&str], values: Values) -> Result<EvilPeer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("evil-peer-{seed}"))
            .enable_all()
            .build()
            .context("building the evil peer's runtime")?;
        let identity = Identity::from_seed([seed; 32]);
        let me = identity.to_libp2p().public().to_peer_id();
        let source = Arc::new(LyingSource {
            me,
            blobs: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
        });
        let mut config = net::Config::loopback();
        config.bootstrap = bootstrap
            .iter()
            .map(|a| a.parse().with_context(|| format!("bootstrap address {a}")))
            .collect::<Result<Vec<Multiaddr>>>()?;
        config.limits.stall_timeout = Duration::from_secs(300);
        config.limits.request_timeout = Duration::from_secs(600);
        let validator: Arc<dyn RecordValidator> = match values {
            Values::Pointers => Arc::new(PointerValidator::default()),
            Values::Anything => Arc::new(AcceptAll),
        };
        let cancel = CancellationToken::new();
        let (client, bound) = rt
            .block_on(net::spawn(
                config,
                &identity,
                source.clone(),
                validator,
                TaskTracker::new(),
                cancel.clone(),
            ))
            .context("starting the evil peer's network")?;
        let listen = bound
            .first()
            .ok_or_else(|| anyhow!("the evil peer bound no address"))?;
        let peer = client.local_peer_id();
        let addr = format!("{listen}/p2p/{peer}");
        eprintln!("[p2p] evil peer {peer} at {addr}");
        Ok(EvilPeer {
            peer,
            addr,
            identity,
            client,
            source,
            cancel,
            rt: Some(rt),
        })
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| anyhow!("the evil peer was killed"))
    }

    /// Serves `bytes` under their id as `serve` scripts, and announces them.
    pub fn serve(&self, bytes: Bytes, serve: Serve) -> Result<BlobId> {
        let id = BlobId::of(&bytes);
        lock(&self.source.blobs).insert(id, (bytes, serve));
        self.provide(&id)?;
        Ok(id)
    }

    /// Serves and announces everything in `holdings`, the tarballs as `tarballs` scripts and
    /// the rest honestly: each blob by its id (as nodes of earlier versions did) and the
    /// package by its provider key (as nodes announce now).
    pub fn serve_holdings(&self, holdings: &Holdings, tarballs: &Serve) -> Result<()> {
        self.provide(&pointer::provider_key(&holdings.name))?;
        self.serve(Bytes::from(holdings.signed.to_bytes()), Serve::Honest)?;
        self.serve(holdings.packument.1.clone(), Serve::Honest)?;
        for (id, bytes) in holdings.tarballs.values() {
            ensure!(self.serve(bytes.clone(), tarballs.clone())? == *id);
        }
        Ok(())
    }

    /// Changes how an already served blob is served.
    pub fn script(&self, id: &BlobId, serve: Serve) -> Result<()> {
        match lock(&self.source.blobs).get_mut(id) {
            Some(e) => {
                e.1 = serve;
                Ok(())
            }
            None => bail!("the evil peer does not serve {id}"),
        }
    }

    /// How many times peers asked for `id`.
    pub fn asked(&self, id: &BlobId) -> u64 {
        lock(&self.source.opens).get(id).copied().unwrap_or(0)
    }

    /// Publishes `data` on the gossip topic `topic`, whatever it says.
    pub fn publish(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        self.rt()?
            .block_on(self.client.publish(topic, data))
            .with_context(|| format!("the evil peer publishing on {topic}"))
    }

    /// Announces `id` in the DHT.
    pub fn provide(&self, id: &BlobId) -> Result<()> {
        self.rt()?
            .block_on(self.client.provide(id))
            .map_err(|e| anyhow!("provide {id}: {e}"))
    }

    /// Stores `value` under `key` and pushes it to the closest peers.
    pub fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.rt()?
            .block_on(self.client.put_record(key, value))
            .map_err(|e| anyhow!("put_record: {e}"))
    }

    /// The values the DHT holds under `key` (the caller's validator applied).
    pub fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let found = self
            .rt()?
            .block_on(self.client.get_records(key, DHT_DEADLINE))
            .map_err(|e| anyhow!("get_records: {e}"))?;
        Ok(found.into_iter().map(|f| f.value).collect())
    }

    /// Waits until the DHT returns `operator`'s valid pointer for `name` with sequence `seq`
    /// (the operator published it), and returns the pointer's bytes.
    pub fn wait_pointer(
        &self,
        name: &PackageName,
        operator: &str,
        seq: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let signer: open_registry_protocol::PeerId = operator
            .parse()
            .map_err(|e| anyhow!("operator id {operator}: {e}"))?;
        let key = pointer::dht_key(name, &signer);
        let now = now_ms();
        probe::wait_for(
            timeout,
            &format!("{operator}'s pointer #{seq} for {name}"),
            || {
                self.get_records(key.clone())
                    .ok()?
                    .into_iter()
                    .find(|v| pointer::validate(&key, v, now).is_ok_and(|p| p.get().seq == seq))
            },
        )
    }

    /// Fetches blob `id` from `peer` `n` times at once (one stream each, all opened together,
    /// as a busy node would), each within `deadline`; what each fetch got.
    pub fn fetch_many(
        &self,
        peer: &str,
        id: &BlobId,
        n: usize,
        deadline: Duration,
    ) -> Result<Vec<Result<Vec<u8>, String>>> {
        let peer: PeerId = peer.parse().map_err(|e| anyhow!("peer id {peer}: {e}"))?;
        let fetches = (0..n).map(|_| async move {
            let t = self
                .client
                .fetch(peer, id, 1 << 30, deadline)
                .await
                .map_err(|e| e.to_string())?;
            t.read_all().await.map_err(|e| e.to_string())
        });
        Ok(self.rt()?.block_on(futures::future::join_all(fetches)))
    }

    /// Asks `peer` `n` times at once (one stream each, all opened together) which records it
    /// holds for package `name`, each within `deadline`; what each answer named.
    pub fn record_ids_many(
        &self,
        peer: &str,
        name: &str,
        n: usize,
        deadline: Duration,
    ) -> Result<Vec<Result<Vec<BlobId>, String>>> {
        let peer: PeerId = peer.parse().map_err(|e| anyhow!("peer id {peer}: {e}"))?;
        let asks = (0..n).map(|_| async move {
            self.client
                .record_ids(peer, name, deadline)
                .await
                .map_err(|e| e.to_string())
        });
        Ok(self.rt()?.block_on(futures::future::join_all(asks)))
    }

    /// Peers in its routing table.
    pub fn routing_table(&self) -> Result<usize> {
        Ok(self
            .rt()?
            .block_on(self.client.peers())
            .map_err(|e| anyhow!("peers: {e}"))?
            .routing_table_size)
    }

    /// Waits until its routing table holds at least `n` peers.
    pub fn wait_routing_table(&self, n: usize, timeout: Duration) -> Result<()> {
        probe::wait_for(
            timeout,
            &format!("the evil peer's routing table to hold {n}"),
            || self.routing_table().ok().filter(|&s| s >= n),
        )
        .map(drop)
    }

    /// Dies at once: every task and connection of the peer is dropped, as in a crash.
    pub fn kill(&mut self) {
        self.cancel.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for EvilPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
