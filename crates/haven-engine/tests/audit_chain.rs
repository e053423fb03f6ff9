//! The audit chain on a real (local) repository, tampered with on disk the way someone
//! with write access to the bucket would: an entry edited, one deleted, two swapped, the
//! last ones cut off behind a signed head, a head signed with another key. Each must be
//! named; an intact chain must pass; concurrent writers must each get their own place.

use std::path::Path;

use haven_engine::recovery::audit::{self, chain_key};
use haven_engine::recovery::audit_verify::{sign_head, verify_chain};
use haven_engine::repo::Repository;
use haven_storage::Store;

async fn repo(dir: &Path) -> Repository {
    let url = format!("file://{}", dir.display());
    Repository::open_or_create(Store::open(&url).unwrap(), Default::default())
        .await
        .unwrap()
}

async fn with_entries(dir: &Path, n: u64) -> Repository {
    let r = repo(dir).await;
    for i in 0..n {
        let key = audit::record(&r, "test", &format!("{i:064}"), serde_json::json!({"i": i}))
            .await
            .unwrap();
        assert_eq!(key, chain_key(i + 1));
    }
    r
}

fn file(dir: &Path, seq: u64) -> std::path::PathBuf {
    dir.join(chain_key(seq))
}

fn key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

#[tokio::test]
async fn an_intact_chain_passes_and_concurrent_writers_each_get_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 3).await;
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                audit::record(&r, "race", "x", serde_json::json!({"w": i}))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut keys = vec![];
    for w in writers {
        keys.push(w.await.unwrap());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8, "each writer has its own entry");
    let (_, h) = sign_head(&r, &key(1), &[]).await.unwrap();
    assert_eq!(h.seq, 11);
    let v = verify_chain(&r, Some(&key(1).verifying_key()), &[])
        .await
        .unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
    assert_eq!((v.entries, v.heads, v.heads_authenticated), (11, 1, 1));
    let listed = audit::list(&r).await.unwrap();
    assert_eq!(listed.len(), 11);
    assert!(listed
        .iter()
        .enumerate()
        .all(|(i, (_, e))| e.seq == Some(i as u64 + 1)));
    // haven verify sees the same.
    let report = haven_engine::verify::verify(&r, false).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
}

#[tokio::test]
async fn an_edited_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 5).await;
    let text = std::fs::read_to_string(file(dir.path(), 2)).unwrap();
    std::fs::write(file(dir.path(), 2), text.replace("\"test\"", "\"tset\"")).unwrap();
    let v = verify_chain(&r, None, &[]).await.unwrap();
    assert_eq!(v.entries, 2, "{v:?}");
    assert!(v.problems[0].starts_with("entry 2 "), "{v:?}");
    assert!(v.problems[0].contains("was changed"), "{v:?}");
    let report = haven_engine::verify::verify(&r, false).await.unwrap();
    assert!(!report.intact());
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 5).await;
    std::fs::remove_file(file(dir.path(), 3)).unwrap();
    let v = verify_chain(&r, None, &[]).await.unwrap();
    assert!(v.problems[0].starts_with("entry 3 is missing"), "{v:?}");
}

#[tokio::test]
async fn reordered_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 5).await;
    let (a, b) = (file(dir.path(), 4), file(dir.path(), 5));
    let (ta, tb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, tb).unwrap();
    std::fs::write(&b, ta).unwrap();
    let v = verify_chain(&r, None, &[]).await.unwrap();
    assert!(v.problems[0].contains("holds entry 5"), "{v:?}");
    assert!(v.problems[0].contains("reordered"), "{v:?}");
}

#[tokio::test]
async fn entries_cut_off_behind_a_signed_head_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 5).await;
    sign_head(&r, &key(1), &[]).await.unwrap();
    std::fs::remove_file(file(dir.path(), 5)).unwrap();
    std::fs::remove_file(file(dir.path(), 4)).unwrap();
    let v = verify_chain(&r, Some(&key(1).verifying_key()), &[])
        .await
        .unwrap();
    assert_eq!(v.entries, 3);
    assert!(
        v.problems[0].contains("the chain ends at entry 3")
            && v.problems[0].contains("names entry 5"),
        "{v:?}"
    );
    // Writers continue from the shortened chain, but the head still tells.
    audit::record(&r, "after", "x", serde_json::json!({}))
        .await
        .unwrap();
    let v = verify_chain(&r, None, &[]).await.unwrap();
    assert!(v.problems[0].contains("the chain ends at entry 4"), "{v:?}");
    audit::record(&r, "after", "x", serde_json::json!({}))
        .await
        .unwrap();
    let v = verify_chain(&r, None, &[]).await.unwrap();
    assert!(
        v.problems[0].starts_with("entry 5 differs from what head"),
        "{v:?}"
    );
}

#[tokio::test]
async fn a_head_signed_with_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = with_entries(dir.path(), 2).await;
    sign_head(&r, &key(2), &[]).await.unwrap();
    let v = verify_chain(&r, Some(&key(1).verifying_key()), &[])
        .await
        .unwrap();
    assert_eq!(v.heads_authenticated, 0);
    assert!(v.problems[0].contains("does not verify"), "{v:?}");
    // A head whose numbers were edited no longer verifies either.
    let head = std::fs::read_dir(dir.path().join("audit-heads"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&head).unwrap();
    std::fs::write(&head, text.replace("\"seq\": 2", "\"seq\": 1")).unwrap();
    let v = verify_chain(&r, Some(&key(2).verifying_key()), &[])
        .await
        .unwrap();
    assert!(v.problems[0].contains("does not verify"), "{v:?}");
}

#[tokio::test]
async fn heads_copied_to_another_repository_show_a_chain_cut_together_with_its_heads() {
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r = with_entries(dir.path(), 4).await;
    let other = repo(other_dir.path()).await;
    sign_head(&r, &key(1), &[&other]).await.unwrap();
    let k = key(1).verifying_key();
    let v = verify_chain(&r, Some(&k), &[&other]).await.unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
    assert_eq!((v.heads, v.heads_authenticated), (2, 2));
    // Someone with write access to this repository alone removes its last entry and
    // every head here: the chain alone looks whole, the copy tells.
    std::fs::remove_file(file(dir.path(), 4)).unwrap();
    std::fs::remove_dir_all(dir.path().join("audit-heads")).unwrap();
    let alone = verify_chain(&r, Some(&k), &[]).await.unwrap();
    assert!(alone.problems.is_empty(), "{alone:?}");
    let v = verify_chain(&r, Some(&k), &[&other]).await.unwrap();
    assert!(v.problems[0].contains("the chain ends at entry 3"), "{v:?}");
    assert!(v.problems[0].contains("audit-heads-of/"), "{v:?}");
    // The copy does not disturb the other repository's own chain or verification.
    let theirs = haven_engine::verify::verify(&other, false).await.unwrap();
    assert!(theirs.intact(), "{:?}", theirs.problems);
}
