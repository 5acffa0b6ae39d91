//! Issue 13, reachability without hand configuration, in the network laboratory
//! (tests/src/lab): AutoNAT v2, circuit relay v2 and DCUtR.
//!
//! A community node `eu-1` on a public address starts without `--kad-server` and without
//! `--external-addr`: it joins through a seed node (its bootstrap peer, whose AutoNAT server
//! dials it back), so AutoNAT must find that it is reachable, and its Kademlia switches to
//! server mode and it offers a relay. Two laptops behind two different home routers (two
//! NATs) bootstrap only from `eu-1`. Each finds it is not reachable (its dial-back fails at
//! its home router), stays a Kademlia client and reserves a relay slot on `eu-1`. laptop-1
//! (an operator with an upstream) fetches a package; laptop-2 (no upstream, trusting
//! laptop-1) installs it with the real npm: the only holder is laptop-1, which laptop-2 knows
//! no address of but reaches through a relay they share (or the relayed address in laptop-1's
//! provider record). Whether DCUtR then upgraded the
//! relayed connection to a direct one is reported, not required: whether a hole punch
//! through two MASQUERADE NATs works depends on timing.
//!
//! Delays run at a fifth of the published figures; the laboratory needs root, and without it
//! the test fails saying so.

use std::time::Duration;

use anyhow::{Result, ensure};
use open_registry_tests::installed::{self, Client};
use open_registry_tests::lab::Lab;
use open_registry_tests::public::Operator;
use open_registry_tests::{
    FakeUpstream, LabNode, Node as _, Npm, PackageSpec, Region, UpstreamOptions, probe,
};
use serde_json::Value;

/// The tarball: larger than libp2p's default relay circuit cap (128 KiB), so a relay left at
/// that default would cut it off.
const TARBALL: usize = 512 * 1024;

/// How long AutoNAT, the reservations and the installs may take, each.
const DEADLINE: Duration = Duration::from_secs(90);

fn say(line: &str) {
    eprintln!("[lab-relay] {line}");
}

/// `/-/open-registry/peers` of `node`.
fn peers(node: &LabNode<'_>) -> Result<Value> {
    probe::json(&node.get("/-/open-registry/peers", &[])?)
}

/// Waits until `node`'s peers view satisfies `check`, and returns it.
fn wait_peers(node: &LabNode<'_>, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    probe::wait_for(DEADLINE, &format!("{} {what}", node.host), || {
        peers(node).ok().filter(|v| check(v))
    })
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn natted_laptops_reach_each_other_through_an_autonat_confirmed_relay() -> Result<()> {
    let lab = Lab::builder()
        .upstream("npm")
        .host("seed", Region::Europe)
        .host("eu-1", Region::Europe)
        .laptop("laptop-1", Region::Europe, "home-1")
        .laptop("laptop-2", Region::Europe, "home-2")
        .delay_scale(0.2)
        .build()?;
    let up = lab.enter("npm", || {
        FakeUpstream::start_with(UpstreamOptions {
            bind: Some(lab.addr("npm").into()),
            ..UpstreamOptions::default()
        })
    })??;
    up.publish(&PackageSpec {
        big_file: Some(TARBALL),
        ..PackageSpec::new("or-lab-relay", "1.0.0")
    })?;

    // The seed is declared a server; eu-1 must find out by itself.
    let seed = LabNode::start(&lab, "seed", None, &["--no-upstream", "--kad-server"])?;
    let eu = LabNode::start(
        &lab,
        "eu-1",
        None,
        &["--no-upstream", "--bootstrap", seed.addr.as_str()],
    )?;
    let v = wait_peers(&eu, "to be confirmed reachable", |v| {
        v["reachability"] == "public" && v["kad_server"] == true && v["relay_offered"] == true
    })?;
    say(&format!(
        "eu-1: reachability {}, Kademlia server, offering a relay; external {:?}",
        v["reachability"],
        strs(&v["external"])
    ));
    let public = format!("/ip4/{}/tcp/", lab.addr("eu-1"));
    ensure!(
        strs(&v["external"]).iter().any(|a| a.starts_with(&public)),
        "eu-1's confirmed addresses {:?} are not its public one",
        v["external"]
    );

    let op = Operator::new(141)?;
    let one = LabNode::start(
        &lab,
        "laptop-1",
        Some(op.dir()),
        &["--upstream", up.url(), "--bootstrap", eu.addr.as_str()],
    )?;
    let two = LabNode::start(
        &lab,
        "laptop-2",
        None,
        &[
            "--no-upstream",
            "--bootstrap",
            eu.addr.as_str(),
            "--trust",
            one.id.as_str(),
            "--trust-threshold",
            "1",
        ],
    )?;
    for laptop in [&one, &two] {
        let v = wait_peers(laptop, "to hold a relay reservation on eu-1", |v| {
            v["reachability"] == "private"
                && strs(&v["relays"]).contains(&eu.id.as_str())
                && strs(&v["external"])
                    .iter()
                    .any(|a| a.contains("/p2p-circuit"))
        })?;
        ensure!(
            v["kad_server"] == false,
            "{} behind NAT serves the DHT",
            laptop.host
        );
        ensure!(
            !strs(&v["external"])
                .iter()
                .any(|a| !a.contains("/p2p-circuit")),
            "{} confirmed a direct address from behind its NAT: {:?}",
            laptop.host,
            v["external"]
        );
        say(&format!(
            "{}: reachability private, Kademlia client, reachable at {:?}",
            laptop.host,
            strs(&v["external"])
        ));
    }

    // laptop-1 holds the package (announced with its relayed address); nobody else does.
    ensure!(one.get("/or-lab-relay", &[])?.status == 200);
    ensure!(
        one.get("/or-lab-relay/-/or-lab-relay-1.0.0.tgz", &[])?
            .status
            == 200
    );
    // Its signed pointer reached the DHT servers (laptop-1 is the only publisher).
    wait_peers(&eu, "to store laptop-1's pointer", |v| {
        v["records_stored"].as_u64().unwrap_or(0) > 0
    })?;
    let served0 = one.counter("peer_served_bytes")?;
    let work = tempfile::tempdir()?;
    let npm = Npm::new(two.gateway())?;
    let (version, _) = two.enter(|| {
        installed::fresh_version(&npm, Client::Npm, work.path(), "relayed", "or-lab-relay")
    })??;
    ensure!(version == "1.0.0", "installed {version}");
    let served = one.counter("peer_served_bytes")? - served0;
    say(&format!(
        "laptop-2's npm install: laptop-1 served {served} bytes to it; eu-1 relayed {} circuits",
        eu.counter("relay_circuits")?
    ));
    ensure!(served >= TARBALL as u64, "laptop-1 served {served} bytes");

    // DCUtR: reported, not required.
    let outcome = probe::wait_for(DEADLINE, "a DCUtR outcome on either laptop", || {
        let up =
            one.counter("peer_dcutr_upgraded").ok()? + two.counter("peer_dcutr_upgraded").ok()?;
        let failed =
            one.counter("peer_dcutr_failed").ok()? + two.counter("peer_dcutr_failed").ok()?;
        match (up, failed) {
            (0, 0) => None,
            (0, _) => Some("failed: the connection stayed relayed"),
            _ => Some("upgraded: the laptops hold a direct connection"),
        }
    })?;
    let two_sees = peers(&two)?;
    let link = two_sees["connected"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["peer_id"] == one.id.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    say(&format!(
        "DCUtR {outcome}; laptop-2's connection to laptop-1: {link}"
    ));
    ensure!(
        outcome.starts_with("upgraded") || outcome.starts_with("failed"),
        "{outcome}"
    );
    Ok(())
}
