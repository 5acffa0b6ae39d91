//! Issue 13 in the network laboratory (tests/src/lab): which peer a node asks, across real
//! distances and a NAT.
//!
//! Two community nodes, one in Europe and one in North America, mirror an upstream in North
//! America. A laptop in Europe, behind its home router's NAT and with no upstream of its own,
//! trusts both operators and installs with the real npm through its node. It measures both
//! round trips (ping), asks the nearer community node first, and when that one dies between
//! two installs, the next install comes from the other. Which node served the bytes is read
//! from their own counters (`peer_served_bytes`).
//!
//! Delays run at half the published figures, so the test stays short; the laboratory needs
//! root, and without it the test fails saying so.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use open_registry_tests::installed::{self, Client};
use open_registry_tests::lab::Lab;
use open_registry_tests::public::Operator;
use open_registry_tests::{
    FakeUpstream, LabNode, Node as _, Npm, PackageSpec, Region, UpstreamOptions,
};

/// Each tarball is larger than every record blob a node serves together.
const TARBALL: usize = 256 * 1024;

fn say(line: &str) {
    eprintln!("[lab-peers] {line}");
}

/// A FakeUpstream on the lab's host `npm`, publishing `names` at 1.0.0, each with a tarball
/// of [`TARBALL`] bytes.
fn upstream(lab: &Lab, names: &[&str]) -> Result<FakeUpstream> {
    let up = lab.enter("npm", || {
        FakeUpstream::start_with(UpstreamOptions {
            bind: Some(lab.addr("npm").into()),
            ..UpstreamOptions::default()
        })
    })??;
    for name in names {
        up.publish(&PackageSpec {
            big_file: Some(TARBALL),
            ..PackageSpec::new(name, "1.0.0")
        })?;
    }
    Ok(up)
}

/// `npm install NAME` in a fresh project through `node`, run inside its namespace: the
/// version installed.
fn npm_install(
    node: &LabNode<'_>,
    work: &std::path::Path,
    label: &str,
    name: &str,
) -> Result<String> {
    let npm = Npm::new(node.gateway())?;
    let (version, _) =
        node.enter(|| installed::fresh_version(&npm, Client::Npm, work, label, name))??;
    Ok(version)
}

/// The bytes `node` served to peers so far.
fn served(node: &LabNode<'_>) -> Result<u64> {
    node.counter("peer_served_bytes")
}

/// The dependencies of `or-lab-many`, each with a tarball of [`TARBALL`] bytes.
const MANY: usize = 24;

fn many_names() -> Vec<String> {
    (0..MANY).map(|i| format!("or-lab-m{i:02}")).collect()
}

#[test]
fn a_natted_laptop_installs_from_the_nearest_community_node_and_falls_back_to_the_other()
-> Result<()> {
    let lab = Lab::builder()
        .upstream("npm")
        .host("eu-1", Region::Europe)
        .host("na-1", Region::NorthAmerica)
        .laptop("eu-laptop", Region::Europe, "eu-home")
        .delay_scale(0.5)
        .build()?;
    let deps = many_names();
    let mut names: Vec<&str> = deps.iter().map(String::as_str).collect();
    names.push("or-lab-a");
    let up = upstream(&lab, &names)?;
    let mut many = PackageSpec::new("or-lab-many", "1.0.0");
    for d in &deps {
        many = many.dep(d, "^1.0.0");
    }
    up.publish(&many)?;
    names.push("or-lab-many");
    let (eu_op, na_op) = (Operator::new(131)?, Operator::new(132)?);
    let community = |host: &str, op: &Operator, bootstrap: Option<&str>| {
        let mut args = vec!["--upstream", up.url(), "--kad-server"];
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b]);
        }
        LabNode::start(&lab, host, Some(op.dir()), &args)
    };
    let mut eu = community("eu-1", &eu_op, None)?;
    let na = community("na-1", &na_op, Some(eu.addr.as_str()))?;
    // Both community nodes hold every package (and sign records for them).
    for node in [&eu, &na] {
        for name in &names {
            let r = node.get(&format!("/{name}"), &[])?;
            ensure!(r.status == 200, "{name} on {}: {}", node.host, r.status);
            let tarball = format!("/{name}/-/{name}-1.0.0.tgz");
            ensure!(node.get(&tarball, &[])?.status == 200);
        }
    }
    let trust = format!("{},{}", eu.id, na.id);
    let laptop = LabNode::start(
        &lab,
        "eu-laptop",
        None,
        &[
            "--no-upstream",
            "--bootstrap",
            eu.addr.as_str(),
            "--bootstrap",
            na.addr.as_str(),
            "--trust",
            trust.as_str(),
            "--trust-threshold",
            "1",
        ],
    )?;
    laptop.wait_measured(&[eu.id.as_str(), na.id.as_str()], Duration::from_secs(30))?;
    let rtts = laptop.rtts()?;
    let rtt = |id: &str| -> Result<u64> {
        rtts.iter()
            .find(|(p, _)| p == id)
            .and_then(|(_, r)| *r)
            .with_context(|| format!("no round trip to {id}"))
    };
    let (to_eu, to_na) = (rtt(&eu.id)?, rtt(&na.id)?);
    say(&format!(
        "laptop's round trips: eu-1 {:.1} ms, na-1 {:.1} ms (the laboratory: {:?} and {:?})",
        to_eu as f64 / 1000.0,
        to_na as f64 / 1000.0,
        lab.rtt("eu-laptop", "eu-1"),
        lab.rtt("eu-laptop", "na-1"),
    ));
    ensure!(to_eu < to_na, "eu-1 measured farther than na-1");

    // npm through the laptop's node, inside the laptop's namespace.
    let work = tempfile::tempdir()?;
    let install = |label: &str, name: &str| npm_install(&laptop, work.path(), label, name);
    let (eu0, na0) = (served(&eu)?, served(&na)?);
    ensure!(install("first", "or-lab-a")? == "1.0.0");
    let (eu1, na1) = (served(&eu)?, served(&na)?);
    say(&format!(
        "npm install or-lab-a: eu-1 served {} bytes, na-1 {} bytes",
        eu1 - eu0,
        na1 - na0
    ));
    ensure!(
        eu1 - eu0 >= TARBALL as u64 && na1 - na0 < TARBALL as u64,
        "the nearer node did not serve the tarball: eu-1 {}, na-1 {}",
        eu1 - eu0,
        na1 - na0
    );

    // The nearer node dies in the middle of an install of 25 packages, as soon as it has
    // served one of their tarballs: the install still succeeds, the rest from the other node.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (installed, killed_at) = std::thread::scope(|s| {
        let watcher = s.spawn(|| -> Result<Option<u64>> {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = served(&eu)?;
                if now - eu1 >= TARBALL as u64 {
                    eu.kill();
                    return Ok(Some(now - eu1));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(None)
        });
        let installed = install("many", "or-lab-many");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let killed = watcher.join().expect("the watcher panicked");
        (installed, killed)
    });
    let killed_at = killed_at?.context("the install ended before eu-1 served a tarball")?;
    ensure!(installed? == "1.0.0");
    let na2 = served(&na)?;
    say(&format!(
        "eu-1 killed after serving {killed_at} bytes of npm install or-lab-many ({} packages); na-1 served the other {} bytes",
        MANY + 1,
        na2 - na1
    ));
    ensure!(
        killed_at < (MANY * TARBALL) as u64 && na2 - na1 >= TARBALL as u64,
        "na-1 served {} bytes after eu-1 served {killed_at}",
        na2 - na1
    );
    let tree = work.path().join("many-npm/node_modules");
    for d in &deps {
        ensure!(
            tree.join(d).join("package.json").is_file(),
            "{d} is missing from the installed tree"
        );
    }
    Ok(())
}

/// Two laptops behind one home router find each other with mDNS (neither names the other),
/// and the second one's install comes from the first, over the LAN, not from the community
/// node across the NAT. Then the community node stops: the second laptop still installs a
/// package only the first one has, learning its records from the first (the record-ids
/// protocol), since no Kademlia server is left to ask.
#[test]
fn laptops_on_one_lan_find_each_other_with_mdns_and_share_over_it() -> Result<()> {
    let lab = Lab::builder()
        .upstream("npm")
        .host("eu-1", Region::Europe)
        .laptop("laptop-1", Region::Europe, "home")
        .laptop("laptop-2", Region::Europe, "home")
        .delay_scale(0.5)
        .build()?;
    let up = upstream(&lab, &["or-lab-lan", "or-lab-lan-b"])?;
    let op = Operator::new(133)?;
    let mut eu = LabNode::start(
        &lab,
        "eu-1",
        Some(op.dir()),
        &["--upstream", up.url(), "--kad-server"],
    )?;
    for name in ["or-lab-lan", "or-lab-lan-b"] {
        ensure!(eu.get(&format!("/{name}"), &[])?.status == 200);
        ensure!(eu.get(&format!("/{name}/-/{name}-1.0.0.tgz"), &[])?.status == 200);
    }
    let laptop = |host: &str| {
        LabNode::start(
            &lab,
            host,
            None,
            &[
                "--no-upstream",
                "--bootstrap",
                eu.addr.as_str(),
                "--trust",
                eu.id.as_str(),
                "--trust-threshold",
                "1",
            ],
        )
    };
    let (one, two) = (laptop("laptop-1")?, laptop("laptop-2")?);
    // mDNS: each connects to the other, with a LAN round trip.
    two.wait_measured(&[one.id.as_str(), eu.id.as_str()], Duration::from_secs(30))?;
    one.wait_measured(&[two.id.as_str()], Duration::from_secs(30))?;
    say(&format!("laptop-2 sees {:?}", two.rtts()?));

    let work = tempfile::tempdir()?;
    let install =
        |node: &LabNode<'_>, label: &str, name: &str| npm_install(node, work.path(), label, name);
    ensure!(install(&one, "first", "or-lab-lan")? == "1.0.0");
    ensure!(install(&one, "first-b", "or-lab-lan-b")? == "1.0.0");
    let (eu1, one1) = (served(&eu)?, served(&one)?);
    ensure!(install(&two, "second", "or-lab-lan")? == "1.0.0");
    let (eu2, one2) = (served(&eu)?, served(&one)?);
    say(&format!(
        "laptop-2's npm install: laptop-1 served {} bytes over the LAN, eu-1 {} bytes",
        one2 - one1,
        eu2 - eu1
    ));
    ensure!(
        one2 - one1 >= TARBALL as u64 && eu2 - eu1 < TARBALL as u64,
        "the tarball did not come over the LAN: laptop-1 {}, eu-1 {}",
        one2 - one1,
        eu2 - eu1
    );

    // The community node stops. laptop-2 has never seen or-lab-lan-b: its records, its
    // packument and its tarball all come from laptop-1.
    eu.kill();
    ensure!(install(&two, "alone", "or-lab-lan-b")? == "1.0.0");
    let one3 = served(&one)?;
    say(&format!(
        "eu-1 stopped; laptop-2's npm install or-lab-lan-b: laptop-1 served {} bytes over the LAN",
        one3 - one2
    ));
    ensure!(
        one3 - one2 >= TARBALL as u64,
        "laptop-1 served {} bytes",
        one3 - one2
    );
    Ok(())
}
