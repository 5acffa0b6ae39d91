//! The network laboratory: hosts in four regions, real distances, NATed laptops, on one
//! machine.
//!
//! Every multi-node test elsewhere runs on loopback, where a round trip costs 0.06 ms. A
//! [`Lab`] gives each host its own Linux network namespace, joins them through a router
//! namespace that delays every packet by the published one-way delay between the two hosts'
//! regions ([`regions`]), and puts "laptops" behind a home router that masquerades them, so
//! that distance, NAT and peer choice can be tested and benchmarked. The tests
//! (`tests/tests/lab.rs`) and the benchmarks share it.
//!
//! ```text
//!   eu-1 10.1.1.2   na-1 10.2.1.2     eu-laptop 192.168.1.10
//!     │ eth0          │ eth0            │ eth0
//!     │               │       ┌─────────┴────────────────────┐
//!     │               │       │ eu-home: the port l1 of      │
//!     │               │       │ bridge lan 192.168.1.1;      │
//!     │               │       │ MASQUERADE out of eth0       │
//!     │               │       └─────────┬────────────────────┘
//!     │               │                 │ eth0 10.1.2.2
//!     │ h0 10.1.1.1   │ h1 10.2.1.1     │ h2 10.1.2.1
//!   ┌─┴───────────────┴─────────────────┴──────────────────────┐
//!   │ router: what arrives from hN → ip rule → table 100       │
//!   │ → default dev dl0 → the delay line (a TUN device and     │
//!   │ two threads holding each packet for its region pair's    │
//!   │ one-way delay) → back into dl0 → main table → the hN     │
//!   │ of the destination                                       │
//!   └──────────────────────────────────────────────────────────┘
//! ```
//!
//! # Topology and addressing
//!
//! - A **host** ([`LabBuilder::host`]) is a namespace with one veth `eth0` to the router. The
//!   N-th public node of region R has `10.R.N.2/24`, the router's side `10.R.N.1`, its
//!   default route. Its address is public in the laboratory: every other host reaches it.
//! - A **home router** ([`LabBuilder::home`]) is such a public node (its `eth0` address is
//!   its WAN address) with a bridge `lan` at `192.168.H.1/24` (H counts homes from 1),
//!   forwarding on, and `iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE`.
//! - A **laptop** ([`LabBuilder::laptop`]) is a namespace whose `eth0` is a port of its home's
//!   bridge, at `192.168.H.10`, `.11`, … in the order added, default route the home router.
//!   Laptops of one home share an Ethernet segment (multicast, so mDNS, works between them,
//!   undelayed); everything else sees them as their home's WAN address, and nothing outside
//!   can dial them (the router has no route to 192.168.0.0/16, so it answers "network
//!   unreachable"; the home router's WAN address has nothing forwarded to the LAN).
//! - The **router** has forwarding on and `rp_filter` off, and sends every packet that arrives
//!   from a host-facing veth through the [`delay_line`] (policy routing: `ip rule add iif hN
//!   lookup 100`, table 100 `default dev dl0`). Packets the delay line writes back arrive on
//!   `dl0`, match no such rule and leave through the main table's connected routes.
//!
//! Same-region traffic is delayed too, by half of [`regions::INTRA_REGION_RTT`] each way (1 ms
//! round trip), as between two availability zones; laptop-to-laptop traffic on one LAN is not.
//! IPv6 is off in every namespace, so nothing but the tests' own IPv4 crosses the delay line.
//! [`LabBuilder::delay_scale`] multiplies every delay (tests run at a fraction, benchmarks at
//! 1.0); [`LabBuilder::loss`] and [`LabBuilder::loss_between`] drop packets with a seeded
//! generator.
//!
//! # Why the delay line is a thread of the test process
//!
//! The kernel here has no `netem`, so the delay is user space: a TUN device in the router
//! namespace and a forwarder holding each packet for its pair's delay (Mahimahi's technique).
//! The forwarder is two threads of the process that builds the [`Lab`], not a separate
//! binary: a thread enters the router namespace (`setns(2)`) only to open the TUN device, whose
//! file descriptor then works from anywhere; there is no binary to locate from a library, and
//! when the process dies, however it dies, the descriptor closes and the device goes with it.
//!
//! # Running things inside
//!
//! [`Lab::command`] is a [`Command`] wrapped in `ip netns exec` (for the `open-registry`
//! binary, npm, …); [`Lab::enter`] and [`Lab::spawn`] run a closure on a thread that has
//! entered a host's namespace, so sockets it creates live there (a socket keeps its namespace
//! whichever thread uses it later).
//!
//! # Teardown
//!
//! Namespaces are named `orlab<pid>x<n>-<node>`, so parallel tests and labs never collide and
//! a crashed run's leftovers are recognisable: [`Lab::builder`]'s `build` first removes those
//! whose process is gone ([`cleanup_stale`]). Dropping a [`Lab`] — also while a test panics,
//! and after a failed `build` — kills every process still inside its namespaces, stops the
//! delay line and deletes the namespaces, which removes every veth, bridge, TUN device and NAT
//! rule with them. Nothing is ever created in the machine's own namespace, so no traffic of
//! the laboratory can leave it.
//!
//! It needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), iproute2 and iptables. Where a
//! namespace cannot be created, `build` fails saying so; the tests fail rather than pass.

pub mod delay_line;
pub mod regions;

use std::{
    collections::BTreeMap,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};

pub use delay_line::DelayLineStats;
use delay_line::{DelayLine, Plan};
pub use regions::{INTRA_REGION_RTT, Region, UPSTREAM_REGION};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The first part of every laboratory namespace's name.
const PREFIX: &str = "orlab";
/// The routing table that sends packets into the delay line.
const DELAY_TABLE: &str = "100";
/// The TUN device of the delay line, in the router namespace.
const TUN: &str = "dl0";

/// What kind of machine a node of the laboratory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A host with a public laboratory address.
    Host,
    /// A home router: public WAN address, masquerading a LAN of laptops.
    Home,
    /// A laptop on the LAN of the named home router.
    Laptop {
        /// The home router's name.
        home: String,
    },
}

/// One node of a built [`Lab`].
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name in the builder.
    pub name: String,
    /// Its network namespace (`ip netns exec <namespace> …`).
    pub namespace: String,
    /// Its region (a laptop's is its home's).
    pub region: Region,
    /// What it is.
    pub kind: Kind,
    /// Its own address: public for hosts and homes (a home's WAN address), `192.168.H.x` for
    /// laptops.
    pub addr: Ipv4Addr,
    /// The address others see it as: its own, or its home's WAN address for a laptop.
    pub public_addr: Ipv4Addr,
}

#[derive(Clone, Debug)]
struct Spec {
    name: String,
    region: Region,
    kind: Kind,
}

/// Describes a [`Lab`]; [`LabBuilder::build`] creates it.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    specs: Vec<Spec>,
    scale: f64,
    loss: [[f64; 4]; 4],
    seed: u64,
    problems: Vec<String>,
}

/// A built network laboratory; dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    router: String,
    nodes: BTreeMap<String, Node>,
    /// Every namespace created, in creation order (the router first).
    created: Vec<String>,
    delay_line: Option<DelayLine>,
    one_way: [[Duration; 4]; 4],
    torn_down: bool,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// An empty description: no hosts, full-scale delays, no loss.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            specs: Vec::new(),
            scale: 1.0,
            loss: [[0.0; 4]; 4],
            seed: 13,
            problems: Vec::new(),
        }
    }

    /// The node called `name`; panics if there is none (a mistake in the test).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("the lab has no node named {name:?}"))
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The node's own address (see [`Node::addr`]).
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.node(name).addr
    }

    /// The address others see the node as (see [`Node::public_addr`]).
    pub fn public_addr(&self, name: &str) -> Ipv4Addr {
        self.node(name).public_addr
    }

    /// The node's region.
    pub fn region(&self, name: &str) -> Region {
        self.node(name).region
    }

    /// The node's network namespace.
    pub fn namespace(&self, name: &str) -> &str {
        &self.node(name).namespace
    }

    /// Every namespace this lab created, the router's included.
    pub fn namespaces(&self) -> Vec<String> {
        self.created.clone()
    }

    /// The unique prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The one-way delay the delay line applies from region `a` to region `b` (scaled).
    pub fn one_way(&self, a: Region, b: Region) -> Duration {
        self.one_way[usize::from(a.index() - 1)][usize::from(b.index() - 1)]
    }

    /// The configured round trip between two nodes through the router: both one-way delays of
    /// their regions (scaled). Zero between two laptops of one home, which talk over their LAN.
    pub fn rtt(&self, a: &str, b: &str) -> Duration {
        let (na, nb) = (self.node(a), self.node(b));
        if let (Kind::Laptop { home: ha }, Kind::Laptop { home: hb }) = (&na.kind, &nb.kind)
            && ha == hb
        {
            return Duration::ZERO;
        }
        self.one_way(na.region, nb.region) + self.one_way(nb.region, na.region)
    }

    /// What the delay line has done so far.
    pub fn delay_line_stats(&self) -> DelayLineStats {
        self.delay_line
            .as_ref()
            .map(DelayLine::stats)
            .unwrap_or_default()
    }

    /// `program` to run inside the node's namespace: `ip netns exec <ns> <program>`. Add
    /// arguments, environment and stdio as for any [`Command`]. Whatever it starts is killed
    /// when the lab is dropped.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.namespace(name)])
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread inside the node's namespace and returns what it returned. Sockets
    /// it creates belong to that namespace.
    pub fn enter<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter_in_thread(&netns_path(self.namespace(name)), f)
            .with_context(|| format!("running inside {name}"))
    }

    /// Starts `f` on a thread inside the node's namespace (a server, say) and returns once the
    /// thread is inside; join the handle for `f`'s result.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<JoinHandle<Result<T>>> {
        let path = netns_path(self.namespace(name));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let handle = std::thread::Builder::new()
            .name(format!("lab-{name}"))
            .spawn(move || {
                let entered = enter_netns(&path);
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                if !ok {
                    bail!("could not enter the namespace");
                }
                f()
            })
            .context("spawning a thread for the lab")?;
        rx.recv()
            .map_err(|_| anyhow!("the thread for {name} ended before entering its namespace"))??;
        Ok(handle)
    }

    /// Tears the lab down now and reports what could not be removed; dropping the lab does
    /// the same and prints the problems instead.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        // Processes first: a process left inside would keep its namespace alive, unnamed.
        for ns in &self.created {
            kill_processes_in(ns);
        }
        if let Some(mut dl) = self.delay_line.take() {
            dl.stop();
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = delete_netns(ns) {
                problems.push(format!("{e:#}"));
            }
        }
        ensure!(
            problems.is_empty(),
            "tearing the lab down: {}",
            problems.join("; ")
        );
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("network laboratory: {e:#}");
        }
    }
}

impl LabBuilder {
    /// A host with a public address in `region`.
    pub fn host(mut self, name: &str, region: Region) -> Self {
        self.add(name, region, Kind::Host);
        self
    }

    /// A host for the npm upstream, in [`UPSTREAM_REGION`].
    pub fn upstream(self, name: &str) -> Self {
        self.host(name, UPSTREAM_REGION)
    }

    /// A home router in `region`: a public WAN address and a LAN its laptops share behind
    /// NAT. [`LabBuilder::laptop`] adds it by itself when it names a home not yet added.
    pub fn home(mut self, name: &str, region: Region) -> Self {
        self.add(name, region, Kind::Home);
        self
    }

    /// A laptop in `region` on the LAN of the home router `home` (added if it is new; an
    /// existing one must be in the same region).
    pub fn laptop(mut self, name: &str, region: Region, home: &str) -> Self {
        match self.specs.iter().find(|s| s.name == home) {
            None => self.add(home, region, Kind::Home),
            Some(s) if s.kind == Kind::Home && s.region == region => {}
            Some(s) if s.kind == Kind::Home => self.problems.push(format!(
                "laptop {name:?} is in {region} but its home {home:?} is in {}",
                s.region
            )),
            Some(_) => self
                .problems
                .push(format!("laptop {name:?}: {home:?} is not a home router")),
        }
        self.add(
            name,
            region,
            Kind::Laptop {
                home: home.to_owned(),
            },
        );
        self
    }

    /// Multiplies every delay by `scale` (1.0, the default, is the published figures; tests
    /// use a fraction to run fast).
    pub fn delay_scale(mut self, scale: f64) -> Self {
        if !(scale.is_finite() && scale >= 0.0) {
            self.problems
                .push(format!("delay scale {scale} is not a finite number ≥ 0"));
        }
        self.scale = scale;
        self
    }

    /// Drops each packet between two different regions with probability `p` (same-region
    /// traffic keeps its own setting, see [`LabBuilder::loss_between`]).
    pub fn loss(mut self, p: f64) -> Self {
        for a in Region::ALL {
            for b in Region::ALL {
                if a != b {
                    self = self.loss_between(a, b, p);
                }
            }
        }
        self
    }

    /// Drops each packet between regions `a` and `b`, in both directions, with probability
    /// `p` (`a == b` for traffic within a region).
    pub fn loss_between(mut self, a: Region, b: Region, p: f64) -> Self {
        if !(0.0..=1.0).contains(&p) {
            self.problems
                .push(format!("loss {p} between {a} and {b} is not in 0..=1"));
        }
        let (i, j) = (usize::from(a.index() - 1), usize::from(b.index() - 1));
        self.loss[i][j] = p;
        self.loss[j][i] = p;
        self
    }

    /// Seeds the loss generator (the default seed is 13): the same packets crossing in the
    /// same order are dropped the same way.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn add(&mut self, name: &str, region: Region, kind: Kind) {
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            self.problems.push(format!(
                "node name {name:?} must be 1 to 40 of a-z, 0-9 and -"
            ));
        }
        if name == "router" {
            self.problems
                .push("\"router\" is the laboratory's own namespace".into());
        }
        if self.specs.iter().any(|s| s.name == name) {
            self.problems.push(format!("two nodes named {name:?}"));
        }
        self.specs.push(Spec {
            name: name.to_owned(),
            region,
            kind,
        });
    }

    /// Creates the namespaces, links, NAT and the delay line. On any error everything created
    /// so far is removed again.
    pub fn build(self) -> Result<Lab> {
        ensure!(
            self.problems.is_empty(),
            "the lab is described wrongly: {}",
            self.problems.join("; ")
        );
        cleanup_stale();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}x{n}-", std::process::id());
        let scale = self.scale;
        let mut one_way = [[Duration::ZERO; 4]; 4];
        for a in Region::ALL {
            for b in Region::ALL {
                let us = a.one_way(b).as_micros() as f64 * scale;
                one_way[usize::from(a.index() - 1)][usize::from(b.index() - 1)] =
                    Duration::from_micros(us.round() as u64);
            }
        }
        let mut lab = Lab {
            router: format!("{prefix}router"),
            prefix,
            nodes: BTreeMap::new(),
            created: Vec::new(),
            delay_line: None,
            one_way,
            torn_down: false,
        };
        // On error `lab` is dropped here, which removes what was created.
        self.create(&mut lab)?;
        Ok(lab)
    }

    fn create(&self, lab: &mut Lab) -> Result<()> {
        let router = lab.router.clone();
        add_netns(lab, &router).context(
            "the network laboratory could not create a network namespace: it needs root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's `ip`",
        )?;
        set_sysctls(
            &router,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv4/conf/all/send_redirects", "0"),
                ("net/ipv4/conf/default/send_redirects", "0"),
            ],
        )?;

        // The delay line first, so that no packet can ever be routed around it.
        let device = enter_in_thread(&netns_path(&router), || delay_line::open_tun(TUN))??;
        let plan = Plan {
            one_way: lab.one_way,
            loss: self.loss,
            seed: self.seed,
        };
        lab.delay_line = Some(DelayLine::start(device, plan)?);
        // A long queue into the forwarder: bursts wait for it instead of being dropped.
        ip(&router, &["link", "set", TUN, "txqueuelen", "10000", "up"])?;
        ip(
            &router,
            &["route", "add", "default", "dev", TUN, "table", DELAY_TABLE],
        )?;

        // Public nodes: hosts and home routers' WAN sides.
        let mut per_region: BTreeMap<Region, u8> = BTreeMap::new();
        let mut homes: BTreeMap<String, (u8, u8)> = BTreeMap::new(); // home → (H, laptops)
        let public = self
            .specs
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Laptop { .. }));
        for (veth_index, spec) in public.enumerate() {
            let count = per_region.entry(spec.region).or_insert(0);
            *count += 1;
            ensure!(
                *count <= 250,
                "more than 250 public nodes in {}",
                spec.region
            );
            let (r, k) = (spec.region.index(), *count);
            let ns = format!("{}{}", lab.prefix, spec.name);
            add_netns(lab, &ns)?;
            let forward = if spec.kind == Kind::Home { "1" } else { "0" };
            set_sysctls(&ns, &[("net/ipv4/ip_forward", forward)])?;
            let veth = format!("h{veth_index}");
            let gw = Ipv4Addr::new(10, r, k, 1);
            let addr = Ipv4Addr::new(10, r, k, 2);
            ip(
                &router,
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            ip(&router, &["addr", "add", &format!("{gw}/24"), "dev", &veth])?;
            ip(&router, &["link", "set", &veth, "up"])?;
            ip(
                &router,
                &[
                    "rule",
                    "add",
                    "iif",
                    &veth,
                    "lookup",
                    DELAY_TABLE,
                    "pref",
                    "100",
                ],
            )?;
            ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&ns, &["link", "set", "eth0", "up"])?;
            ip(&ns, &["route", "add", "default", "via", &gw.to_string()])?;
            if spec.kind == Kind::Home {
                let h = u8::try_from(homes.len() + 1)
                    .ok()
                    .filter(|h| *h <= 250)
                    .context("more than 250 home routers")?;
                homes.insert(spec.name.clone(), (h, 0));
                ip(&ns, &["link", "add", "lan", "type", "bridge"])?;
                ip(
                    &ns,
                    &["addr", "add", &format!("192.168.{h}.1/24"), "dev", "lan"],
                )?;
                ip(&ns, &["link", "set", "lan", "up"])?;
                run(Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    "eth0",
                    "-j",
                    "MASQUERADE",
                ]))
                .context("the home routers' NAT needs iptables")?;
            }
            lab.nodes.insert(
                spec.name.clone(),
                Node {
                    name: spec.name.clone(),
                    namespace: ns,
                    region: spec.region,
                    kind: spec.kind.clone(),
                    addr,
                    public_addr: addr,
                },
            );
        }

        // Laptops, on their homes' LANs.
        for spec in &self.specs {
            let Kind::Laptop { home } = &spec.kind else {
                continue;
            };
            let (h, laptops) = homes
                .get_mut(home)
                .with_context(|| format!("laptop {}: no home router {home}", spec.name))?;
            *laptops += 1;
            ensure!(*laptops <= 200, "more than 200 laptops behind {home}");
            let (h, i) = (*h, *laptops);
            let home_node = lab.nodes[home].clone();
            let ns = format!("{}{}", lab.prefix, spec.name);
            add_netns(lab, &ns)?;
            let port = format!("l{i}");
            let addr = Ipv4Addr::new(192, 168, h, 9 + i);
            ip(
                &home_node.namespace,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            ip(
                &home_node.namespace,
                &["link", "set", &port, "master", "lan"],
            )?;
            ip(&home_node.namespace, &["link", "set", &port, "up"])?;
            ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&ns, &["link", "set", "eth0", "up"])?;
            ip(
                &ns,
                &["route", "add", "default", "via", &format!("192.168.{h}.1")],
            )?;
            lab.nodes.insert(
                spec.name.clone(),
                Node {
                    name: spec.name.clone(),
                    namespace: ns,
                    region: home_node.region,
                    kind: spec.kind.clone(),
                    addr,
                    public_addr: home_node.addr,
                },
            );
        }
        Ok(())
    }
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Moves the calling thread into the network namespace mounted at `path`.
fn enter_netns(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering the network namespace {}", path.display()))
}

/// Runs `f` on a fresh thread inside the namespace at `path`.
fn enter_in_thread<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("a thread inside {} panicked", path.display()))?
    })
}

/// Creates the namespace `ns` (recorded in `lab` at once, so a later failure removes it),
/// with loopback up and IPv6 off.
fn add_netns(lab: &mut Lab, ns: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", ns]))?;
    lab.created.push(ns.to_owned());
    set_sysctls(
        ns,
        &[
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ],
    )?;
    ip(ns, &["link", "set", "lo", "up"])
}

/// Writes `/proc/sys/<key>` from a thread inside `ns` (network sysctls are per namespace, and
/// `/proc/sys/net` shows the namespace of the thread that opens it).
fn set_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    enter_in_thread(&netns_path(ns), || -> Result<()> {
        for (key, value) in settings {
            std::fs::write(Path::new("/proc/sys").join(key), value)
                .with_context(|| format!("setting {key} = {value} in {ns}"))?;
        }
        Ok(())
    })?
}

/// `ip -n <ns> <args>`.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

/// Runs a setup command, failing with its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = crate::process::describe_command(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// SIGKILLs every process inside `ns` except this one.
fn kill_processes_in(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let me = std::process::id();
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if u32::try_from(pid).is_ok_and(|p| p != me) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn delete_netns(ns: &str) -> Result<()> {
    if !netns_path(ns).exists() {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "delete", ns]))
}

/// Removes the namespaces of laboratories whose process is gone (a crashed or killed run):
/// names `orlab<pid>x…` where no process `<pid>` exists. Returns how many were removed.
pub fn cleanup_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        kill_processes_in(&name);
        if delete_netns(&name).is_ok() {
            removed += 1;
        }
    }
    removed
}
