//! Resolving settings into a [`Config`]: defaults, precedence, bad values, and the rendered
//! `config.toml` read back.

use super::*;

fn resolve(s: Settings, npm: Option<&str>) -> anyhow::Result<Config> {
    Config::resolve("/tmp/x".into(), s, || npm.map(str::to_owned))
}

#[test]
fn defaults_take_npm_registry() {
    let c = resolve(Settings::default(), Some("http://10.0.0.1:4873")).unwrap();
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.upstream.unwrap().as_str(), "http://10.0.0.1:4873/");
    assert_eq!(c.max_age, Duration::from_secs(300));
    let c = resolve(Settings::default(), None).unwrap();
    assert!(c.upstream.is_none());
}

#[test]
fn no_upstream_wins_and_skips_npm() {
    let s = Settings {
        no_upstream: Some(true),
        ..Default::default()
    };
    let c = Config::resolve("/x".into(), s, || panic!("npm must not be asked")).unwrap();
    assert!(c.upstream.is_none());
}

#[test]
fn refuses_itself_as_upstream() {
    for up in [
        "http://127.0.0.1:7373",
        "http://localhost:7373/",
        "http://0.0.0.0:7373",
        "http://[::1]:7373",
    ] {
        let s = Settings {
            upstream: Some(up.into()),
            ..Default::default()
        };
        let e = resolve(s, None).unwrap_err().to_string();
        assert!(e.contains("own gateway"), "{up}: {e}");
    }
    let s = Settings {
        upstream: Some("http://127.0.0.1:4873".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_ok());
    let s = Settings {
        listen: Some("0.0.0.0:4873".into()),
        upstream: Some("http://localhost:4873".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
}

#[test]
fn bad_values_are_clear_errors() {
    let s = Settings {
        listen: Some("nowhere".into()),
        ..Default::default()
    };
    assert!(
        resolve(s, None)
            .unwrap_err()
            .to_string()
            .contains("HOST:PORT")
    );
    let s = Settings {
        upstream: Some("ftp://x".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
    let s = Settings {
        max_age: Some("soon".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
    let s = Settings {
        header_read_timeout: Some("0s".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
    let s = Settings {
        max_connections_per_address: Some(0),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
    let s = Settings {
        no_upstream: Some(true),
        changes_feed: Some("http://127.0.0.1:1/_changes".into()),
        ..Default::default()
    };
    let e = resolve(s, None).unwrap_err().to_string();
    assert!(
        e.contains("changes_feed") && e.contains("no upstream"),
        "{e}"
    );
}

#[test]
fn rendered_toml_round_trips() {
    let mut c = Config::new("/d", Some(Url::parse("http://127.0.0.1:4873/").unwrap()));
    c.max_age = Duration::from_secs(60);
    c.connections = gateway::Limits {
        header_read_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(30),
        max_connections: 100,
        max_connections_per_address: 7,
        access_log: false,
    };
    let text = render_toml(&c);
    let s: Settings = toml::from_str(&text).unwrap();
    let back = Config::resolve("/d".into(), s, || None).unwrap();
    assert_eq!(back.upstream, c.upstream);
    assert_eq!(back.max_age, c.max_age);
    assert_eq!(back.listen, c.listen);
    assert_eq!(back.max_tarball_size, c.max_tarball_size);
    assert_eq!(back.memory_cache_size, c.memory_cache_size);
    assert_eq!(back.connections, c.connections);
    let none = render_toml(&Config::new("/d", None));
    let s: Settings = toml::from_str(&none).unwrap();
    assert_eq!(s.no_upstream, Some(true));
}

#[test]
fn flags_win_over_the_file_for_the_upstream_choice() {
    let file = Settings {
        no_upstream: Some(true),
        listen: Some("127.0.0.1:9".into()),
        ..Default::default()
    };
    let flags = Settings {
        upstream: Some("http://10.1.1.1/".into()),
        ..Default::default()
    };
    let c = resolve(flags.or(file.clone()), None).unwrap();
    assert_eq!(c.upstream.unwrap().as_str(), "http://10.1.1.1/");
    assert_eq!(c.listen.port(), 9);
    let c = resolve(Settings::default().or(file), Some("http://10.2.2.2")).unwrap();
    assert!(c.upstream.is_none());
}

#[test]
fn trust_settings() {
    let a = crate::records::identity::Identity::from_seed([1; 32]).peer_id();
    let b = crate::records::identity::Identity::from_seed([2; 32]).peer_id();
    let s = Settings {
        trust: Some(vec![a.to_string(), b.to_string(), a.to_string()]),
        trust_threshold: Some(2),
        ..Default::default()
    };
    let c = resolve(s.clone(), None).unwrap();
    assert_eq!(c.trust, vec![a, b]);
    assert!(c.policy().trusts(&b));
    assert_eq!(c.policy().threshold(), 2);
    let text = render_toml(&c);
    let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(back.trust, c.trust);
    let too_many = Settings {
        trust_threshold: Some(3),
        ..s.clone()
    };
    assert!(resolve(too_many, None).is_err());
    let bad = Settings {
        trust: Some(vec!["QmNotAnEd25519Key".into()]),
        ..Default::default()
    };
    assert!(
        resolve(bad, None)
            .unwrap_err()
            .to_string()
            .contains("PeerId")
    );
}

#[test]
fn cooldown_settings() {
    let c = resolve(Settings::default(), None).unwrap();
    assert_eq!(c.min_release_age, None);
    assert!(render_toml(&c).contains("# min_release_age = \"2d\""));
    let s = Settings {
        min_release_age: Some("2d".into()),
        cooldown_exempt: Some(vec!["typescript".into(), " @my-org/*".into()]),
        ..Default::default()
    };
    let c = resolve(s, None).unwrap();
    assert_eq!(c.min_release_age, Some(Duration::from_secs(2 * 86400)));
    assert_eq!(c.cooldown_exempt, vec!["typescript", "@my-org/*"]);
    let text = render_toml(&c);
    let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(back.min_release_age, c.min_release_age);
    assert_eq!(back.cooldown_exempt, c.cooldown_exempt);
    let off = Settings {
        min_release_age: Some("0s".into()),
        ..Default::default()
    };
    assert_eq!(resolve(off, None).unwrap().min_release_age, None);
    for bad in ["Bad Name", "@/*", "@scope/x/*", "*"] {
        let s = Settings {
            cooldown_exempt: Some(vec![bad.into()]),
            ..Default::default()
        };
        let e = resolve(s, None).unwrap_err().to_string();
        assert!(e.contains("cooldown_exempt"), "{bad}: {e}");
    }
    let s = Settings {
        min_release_age: Some("soon".into()),
        ..Default::default()
    };
    assert!(resolve(s, None).is_err());
}

#[test]
fn advisory_threshold_defaults_to_the_trust_threshold() {
    let ids: Vec<String> = [1u8, 2, 3]
        .map(|i| {
            crate::records::identity::Identity::from_seed([i; 32])
                .peer_id()
                .to_string()
        })
        .into();
    let s = Settings {
        trust: Some(ids),
        trust_threshold: Some(2),
        ..Default::default()
    };
    let c = resolve(s.clone(), None).unwrap();
    assert_eq!(c.advisory_threshold(), 2);
    let text = render_toml(&c);
    assert!(text.contains("# advisory_threshold = 2"), "{text}");
    let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(back.advisory_threshold, None);
    let set = Settings {
        advisory_threshold: Some(4),
        ..s.clone()
    };
    let c = resolve(set, None).unwrap();
    assert_eq!(c.advisory_threshold(), 4, "three trusted and this one");
    let back = resolve(toml::from_str(&render_toml(&c)).unwrap(), None).unwrap();
    assert_eq!(back.advisory_threshold, Some(4));
    for k in [0, 5] {
        let bad = Settings {
            advisory_threshold: Some(k),
            ..s.clone()
        };
        assert!(resolve(bad, None).is_err(), "{k}");
    }
}

#[test]
fn unknown_keys_are_refused() {
    assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
}

#[test]
fn announce_rate_is_an_operator_setting() {
    let c = resolve(Settings::default(), None).unwrap();
    let rate = |c: &Config| c.p2p.as_ref().unwrap().limits.announce_rate;
    assert_eq!(rate(&c), net::Limits::default().announce_rate);
    let c = resolve(
        Settings {
            announce_rate: Some(40),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(rate(&c), 40);
    let text = render_toml(&c);
    assert!(text.contains("\nannounce_rate = 40\n"), "{text}");
    let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
    assert_eq!(rate(&back), 40);
    for bad in [0, MAX_ANNOUNCE_RATE + 1] {
        let e = resolve(
            Settings {
                announce_rate: Some(bad),
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("announce_rate must be between 1 and 1000") && e.contains(&bad.to_string()),
            "{e}"
        );
    }
}
