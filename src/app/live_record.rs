//! The live-connection record that lets the next node proxy count what a crash cut.
//!
//! Owns: one small file per running node proxy beside the ZDS socket
//! (`<zds>.live.<pid>-<random>`), locked (`flock`) for as long as the process lives and
//! rewritten with its live connection count a few times a second; at start, the files of
//! earlier processes on this node. A process that exits by itself removes its file (its drain
//! already counted what it cut). A file that can be locked belongs to a process that died
//! without cleaning up (`kill -9`, OOM kill, a panic): its last count is the number of
//! connections that crash cut, and the file is removed once counted.
//!
//! Why a lock and not a pid: node proxies run in pods with pid namespaces of their own, so the
//! previous one's pid means nothing here, but the ZDS directory is the same host path for both
//! and the kernel drops a dead process's `flock` at once. The count is as fresh as the last
//! write (`WRITE_EVERY`): connections opened or closed in the last instant before a crash may
//! be off by those few.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// How often the running process rewrites its count.
pub const WRITE_EVERY: Duration = Duration::from_millis(250);

/// A width that holds any u64, so that a rewrite never leaves a longer old value behind.
const WIDTH: usize = 20;

/// What an earlier node proxy that died left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crashed {
    /// The record file it kept (removed now).
    pub file: PathBuf,
    /// Connections it had open when it last wrote.
    pub live: u64,
}

/// This process's record, locked until it is dropped or finished.
#[derive(Debug)]
pub struct LiveRecord {
    file: Flock<File>,
    path: PathBuf,
    last: Option<u64>,
}

impl LiveRecord {
    /// Creates and locks this process's record beside `zds` and collects the records of
    /// processes that died (each removed once read). An unreadable stale record is reported
    /// with a count of 0 and removed too: it cannot be counted twice.
    pub fn open(zds: &Path) -> std::io::Result<(LiveRecord, Vec<Crashed>)> {
        let crashed = collect(zds);
        let path = sibling(
            zds,
            &format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            let _ = std::fs::remove_file(&path);
            std::io::Error::from(e)
        })?;
        let mut rec = LiveRecord {
            file,
            path,
            last: None,
        };
        rec.update(0)?;
        Ok((rec, crashed))
    }

    /// Records `live` connections (a write only when the count changed).
    pub fn update(&mut self, live: u64) -> std::io::Result<()> {
        if self.last == Some(live) {
            return Ok(());
        }
        self.file
            .write_all_at(format!("{live:>WIDTH$}\n").as_bytes(), 0)?;
        self.last = Some(live);
        Ok(())
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A clean exit: the record goes (what the drain cut it counted itself).
    pub fn finish(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sibling(zds: &Path, tail: &str) -> PathBuf {
    let mut name = zds
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "ztunnel.sock".into());
    name.push(".live.");
    name.push(tail);
    zds.with_file_name(name)
}

/// Records of dead processes beside `zds`: lockable now, so nobody holds them.
fn collect(zds: &Path) -> Vec<Crashed> {
    let Some(dir) = zds.parent() else {
        return Vec::new();
    };
    let prefix = sibling(zds, "");
    let Some(prefix) = prefix.file_name().and_then(|p| p.to_str()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let path = dir.join(name);
        let Ok(f) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        // Held: a live process (the one we roll from, say) owns it.
        let Ok(mut f) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let mut text = String::new();
        let live = match f.read_to_string(&mut text) {
            Ok(_) => text.trim().parse().unwrap_or(0),
            Err(_) => 0,
        };
        // Removed while we hold the lock: no other newcomer counts it too.
        if std::fs::remove_file(&path).is_ok() {
            out.push(Crashed { file: path, live });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

#[cfg(test)]
#[path = "live_record_tests.rs"]
mod tests;
