//! The index's entries: persistence, repair, paging and the packages held read off the keys.

use super::*;

#[test]
fn a_database_closed_a_moment_ago_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for _ in 0..20 {
        let idx = Index::open(&path, Clock::system()).unwrap();
        drop(idx);
    }
    // Held open, it stays locked for a second handle, which says so.
    let _held = Index::open(&path, Clock::system()).unwrap();
    let e = Index::open(&path, Clock::system()).unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
}

#[tokio::test]
async fn packument_entries_come_page_by_page_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
    let names = ["@s/b", "a", "c", "d", "e"];
    for n in names.iter().rev() {
        let e = PackumentEntry {
            id: BlobId::of(n.as_bytes()),
            etag: None,
            last_modified: None,
            checked_at: 0,
        };
        idx.set_packument(&PackageName::parse(n).unwrap(), &e)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = idx.packument_entries_after(after.as_ref(), 2).unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        seen.extend(page.into_iter().map(|(n, e)| {
            assert_eq!(e.id, BlobId::of(n.as_str().as_bytes()));
            n.as_str().to_owned()
        }));
    }
    assert_eq!(seen, names, "every entry once, by name");
    assert_eq!(idx.packument_entries().unwrap().len(), names.len());
}

#[tokio::test]
async fn held_packages_are_read_off_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let idx = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
    let p = |n: &str| PackageName::parse(n).unwrap();
    let e = PackumentEntry {
        id: BlobId::of(b"doc"),
        etag: None,
        last_modified: None,
        checked_at: 0,
    };
    idx.set_packument(&p("only-doc"), &e).await.unwrap();
    idx.set_packument(&p("both"), &e).await.unwrap();
    for (name, file) in [
        ("both", "both-1.0.0.tgz"),
        ("@s/tarballs", "tarballs-1.0.0.tgz"),
        ("@s/tarballs", "tarballs-2.0.0.tgz"),
        ("z", "z-1.0.0.tgz"),
    ] {
        idx.set_tarball(&p(name), file, &BlobId::of(file.as_bytes()))
            .await
            .unwrap();
    }
    let held: Vec<String> = idx
        .held_packages()
        .unwrap()
        .into_iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    assert_eq!(held, ["@s/tarballs", "both", "only-doc", "z"]);
}

#[tokio::test]
async fn entries_persist_and_repair_drops_dangling() {
    let dir = tempfile::tempdir().unwrap();
    let name = PackageName::parse("@s/p").unwrap();
    let a = BlobId::of(b"a");
    let b = BlobId::of(b"b");
    {
        let idx = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
        let e = PackumentEntry {
            id: a,
            etag: Some("\"x\"".into()),
            last_modified: None,
            checked_at: 5,
        };
        idx.set_packument(&name, &e).await.unwrap();
        idx.set_tarball(&name, "p-1.0.0.tgz", &b).await.unwrap();
        // Writing an entry again does not count it twice.
        idx.set_tarball(&name, "p-1.0.0.tgz", &b).await.unwrap();
        assert_eq!(idx.counts(), (1, 1));
        assert_eq!(idx.refs_of(&b).unwrap().len(), 1);
        idx.persist_access().unwrap();
        idx.flush().await.unwrap();
    }
    let idx = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
    assert!(idx.opened_unclean(), "no clean shutdown was recorded");
    assert_eq!(idx.packument(&name).unwrap().unwrap().id, a);
    assert_eq!(idx.tarball(&name, "p-1.0.0.tgz").unwrap(), Some(b));
    assert!(idx.last_access(&b).unwrap().is_some());
    // The counts were never saved; an audit's recount finds them.
    assert_eq!(idx.counts(), (0, 0));
    idx.rebuild_refs().unwrap();
    assert_eq!(idx.counts(), (1, 1));
    assert_eq!(idx.refs_of(&a).unwrap(), vec![Ref::Packument(name.clone())]);
    assert_eq!(idx.repair(|id| *id == a).unwrap(), 1);
    assert_eq!(idx.tarball(&name, "p-1.0.0.tgz").unwrap(), None);
    assert_eq!(idx.counts(), (1, 0));
}

#[test]
fn many_concurrent_flushes_finish() {
    // On a thread of its own: a hung flush must fail this test, not hang the suite.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ok = rt.block_on(async move {
            let idx = std::sync::Arc::new(Index::open(&path, Clock::system()).unwrap());
            let name = PackageName::parse("p").unwrap();
            let tasks = (0..32u32).map(|i| {
                let (idx, name) = (idx.clone(), name.clone());
                tokio::spawn(async move {
                    let id = BlobId::of(&i.to_be_bytes());
                    let file = format!("p-{i}.tgz");
                    idx.set_tarball(&name, &file, &id).await.unwrap();
                    idx.tarball(&name, &file).unwrap() == Some(id)
                })
            });
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .all(|r| r.unwrap())
        });
        let _ = tx.send(ok);
    });
    let ok = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("32 concurrent index writes with their flushes hung");
    assert!(ok);
}
