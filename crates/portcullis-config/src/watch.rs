//! Reload triggers: a change in the config file's directory (or in a directory holding
//! a policy file the config names), or SIGHUP.
//!
//! The directory is watched rather than the file because editors replace files and
//! Kubernetes swaps a ConfigMap's `..data` symlink; the reloader compares content
//! versions, so a spurious trigger costs one read and parse, never a swap.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in the config file's directory.
    FileChanged,
    /// The process received SIGHUP.
    Sighup,
}

impl Trigger {
    /// A word for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file",
            Trigger::Sighup => "sighup",
        }
    }
}

/// Starts watching `path`'s directory, each of `also` (directories of files the config
/// refers to, such as policies), and SIGHUP, on the current tokio runtime. Triggers that
/// arrive within `settle` of each other are coalesced into one.
pub fn triggers(
    path: &Path,
    also: &[std::path::PathBuf],
    settle: Duration,
) -> Result<mpsc::Receiver<Trigger>, String> {
    let (raw_tx, mut raw_rx) = mpsc::channel::<Trigger>(16);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let file_tx = raw_tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                // Full means a reload is already pending, which is all we need.
                let _ = file_tx.try_send(Trigger::FileChanged);
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    for extra in also {
        if *extra != dir {
            watcher
                .watch(extra, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", extra.display()))?;
        }
    }

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if raw_tx.send(Trigger::Sighup).await.is_err() {
                break;
            }
        }
    });

    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while let Some(mut trigger) = raw_rx.recv().await {
            // Editors write in several steps; wait for the burst to end.
            tokio::time::sleep(settle).await;
            while let Ok(t) = raw_rx.try_recv() {
                if t == Trigger::Sighup {
                    trigger = t;
                }
            }
            if tx.send(trigger).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
