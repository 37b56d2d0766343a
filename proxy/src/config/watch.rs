//! Reload when the config file, or a file it names (filter modules, certificates,
//! keys, CAs), changes on disk.
//!
//! Folders are watched rather than files, because tools replace a file rather than
//! write it: editors and deploy tools rename a new one over it, and Kubernetes
//! updates a mounted ConfigMap or Secret by writing a new folder and swapping the
//! `..data` symlink the files lead through, so no event names the file at all. Any
//! event in a watched folder therefore makes the watcher look at the files
//! themselves (where each path leads, size, modification time, and the contents of
//! small ones) and reload only if one of them changed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use crate::app::{App, ConfigSource, RELOAD_DEBOUNCE};

/// The files whose change should trigger a reload.
fn watched_files(app: &App) -> BTreeSet<PathBuf> {
    let snap = app.runtime.snapshot();
    let mut files: BTreeSet<PathBuf> = snap.config.files().iter().map(|f| absolute(f)).collect();
    if let ConfigSource::File(p) = app.source() {
        files.insert(absolute(p));
    }
    files
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What tells that a file changed: the file its path leads to (symlinks followed, so
/// a swapped link counts), its size and modification time, and for a file of up to
/// `HASHED` bytes (configs, certificates, keys) a hash of its contents, since an
/// edit in place that keeps the size can land within the clock tick that stamps
/// modification times. `None` when it cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    contents: Option<u64>,
}

/// Files up to this size are hashed; filter modules above it are replaced whole by
/// their builds and deploys, which changes their size, time or inode.
const HASHED: u64 = 1 << 20;

fn stamp(p: &Path) -> Option<Stamp> {
    use std::hash::{Hash, Hasher};
    let m = std::fs::metadata(p).ok()?;
    let contents = match m.len() <= HASHED {
        true => {
            let mut h = std::hash::DefaultHasher::new();
            std::fs::read(p).ok()?.hash(&mut h);
            Some(h.finish())
        }
        false => None,
    };
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        contents,
    })
}

/// Each watched file's stamp now, keeping `seen`'s for files it already has: a file
/// a reload added was read by that reload, so it is stamped when first noticed.
fn restamp(
    files: &BTreeSet<PathBuf>,
    seen: &BTreeMap<PathBuf, Option<Stamp>>,
) -> BTreeMap<PathBuf, Option<Stamp>> {
    files
        .iter()
        .map(|f| (f.clone(), seen.get(f).cloned().unwrap_or_else(|| stamp(f))))
        .collect()
}

/// Whether the config in force asks for reloads on change.
fn enabled(app: &App) -> bool {
    app.runtime.snapshot().config.config.runtime.watch_config
}

/// Watches the config's files for as long as the process runs; a change reloads
/// while the config in force says `watch_config = true` (a reload may turn it on
/// or off).
pub fn spawn(app: Arc<App>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            if enabled(&app) {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            }
            return;
        }
    };
    // Watch and stamp before returning, so that a change made once the proxy is
    // ready is seen.
    let files = watched_files(&app);
    let mut seen = restamp(&files, &BTreeMap::new());
    let mut dirs = BTreeSet::new();
    sync_dirs(&mut watcher, &files, &mut dirs);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if !enabled(&app) {
                continue;
            }
            // Let a burst of events (write, rename, chmod, a volume's link swap)
            // settle into one look at the files.
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            // The files of the config in force (a reload by signal may have named others).
            let files = watched_files(&app);
            let known = restamp(&files, &seen);
            let now: BTreeMap<_, _> = files.iter().map(|f| (f.clone(), stamp(f))).collect();
            // Stamped before the reload reads them: a change made while it reads is
            // seen at the next event.
            seen = now.clone();
            let Some(changed) = files.iter().find(|f| known.get(*f) != now.get(*f)) else {
                // Events in these folders about other files, or no change.
                sync_dirs(&mut watcher, &files, &mut dirs);
                continue;
            };
            tracing::info!(file = %changed.display(), "file changed: reloading");
            let _ = app.reload().await;
            let files = watched_files(&app);
            seen = restamp(&files, &seen);
            sync_dirs(&mut watcher, &files, &mut dirs);
        }
    });
}

fn sync_dirs(
    watcher: &mut notify::RecommendedWatcher,
    files: &BTreeSet<PathBuf>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(|d| d.to_path_buf()))
        .collect();
    for d in dirs.difference(&wanted) {
        let _ = watcher.unwatch(d);
    }
    for d in wanted.difference(dirs) {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch folder for changes");
        }
    }
    *dirs = wanted;
}
