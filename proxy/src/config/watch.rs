//! Reload when the config file, or a filter module it names, changes on disk.
//!
//! Folders are watched rather than files, because editors and deploy tools replace
//! a file by renaming a new one over it, which a watch on the old file misses.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use crate::app::{App, ConfigSource, RELOAD_DEBOUNCE};

/// The files whose change should trigger a reload.
fn watched_files(app: &App) -> BTreeSet<PathBuf> {
    let snap = app.runtime.snapshot();
    let mut files = BTreeSet::new();
    if let ConfigSource::File(p) = app.source() {
        files.insert(absolute(p));
    }
    for f in &snap.config.config.filters {
        files.insert(absolute(&snap.config.resolve(&f.module)));
    }
    files
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether the config in force asks for reloads on change.
fn enabled(app: &App) -> bool {
    app.runtime.snapshot().config.config.runtime.watch_config
}

/// Watches the config's files for as long as the process runs; a change reloads
/// while the config in force says `watch_config = true` (a reload may turn it on
/// or off).
pub fn spawn(app: Arc<App>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if e.kind.is_access() {
                return;
            }
            for p in e.paths {
                let _ = tx.send(p);
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
    // Watch before returning, so that a change made once the proxy is ready is seen.
    let mut files = watched_files(&app);
    let mut dirs = BTreeSet::new();
    sync_dirs(&mut watcher, &files, &mut dirs);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if !files.contains(&absolute(&first)) || !enabled(&app) {
                continue;
            }
            // Let a burst of events (write, rename, chmod) settle into one reload.
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(file = %first.display(), "file changed: reloading");
            let _ = app.reload().await;
            files = watched_files(&app);
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
