//! Tests of the live-connection record: a held record is not counted, a dropped one (the lock
//! gone as at a crash) is counted once with its last value, a finished one is gone.

use super::*;

fn zds(dir: &Path) -> PathBuf {
    dir.join("ztunnel.sock")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringmesh-live-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_held_record_is_not_counted_and_a_dead_ones_last_count_is_once() {
    let dir = tmp("held");
    let (mut old, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert!(crashed.is_empty());
    old.update(7).unwrap();
    old.update(42).unwrap();
    // The old process is alive (rolling update): the newcomer leaves its record alone.
    let (new, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert!(crashed.is_empty(), "{crashed:?}");
    assert!(old.path().exists());
    // The old process dies without cleaning up: its lock goes with it, the file stays.
    let old_path = old.path().to_path_buf();
    drop(old);
    assert!(old_path.exists());
    let (third, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert_eq!(
        crashed,
        vec![Crashed {
            file: old_path.clone(),
            live: 42
        }]
    );
    assert!(!old_path.exists(), "counted once, then removed");
    // `new` is still held: counted by nobody.
    assert!(new.path().exists());
    let (fourth, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert!(crashed.is_empty(), "{crashed:?}");
    for r in [new, third, fourth] {
        r.finish();
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_shorter_count_overwrites_a_longer_one_and_other_files_are_ignored() {
    let dir = tmp("width");
    std::fs::write(dir.join("ztunnel.sock.handover"), b"x").unwrap();
    std::fs::write(dir.join("other.live.1"), b"99").unwrap();
    let (mut r, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert!(crashed.is_empty());
    r.update(123_456).unwrap();
    r.update(3).unwrap();
    let text = std::fs::read_to_string(r.path()).unwrap();
    assert_eq!(text.trim(), "3");
    let p = r.path().to_path_buf();
    drop(r);
    let (r2, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert_eq!(crashed.len(), 1);
    assert_eq!(crashed[0].live, 3);
    assert!(!p.exists());
    r2.finish();
    assert!(dir.join("other.live.1").exists(), "not ours: left alone");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_in_a_dead_record_counts_zero_and_is_removed() {
    let dir = tmp("garbage");
    let junk = dir.join("ztunnel.sock.live.1-deadbeef");
    std::fs::write(&junk, b"not a number").unwrap();
    let (r, crashed) = LiveRecord::open(&zds(&dir)).unwrap();
    assert_eq!(
        crashed,
        vec![Crashed {
            file: junk.clone(),
            live: 0
        }]
    );
    assert!(!junk.exists());
    r.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}
