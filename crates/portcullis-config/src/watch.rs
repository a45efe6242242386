//! Reload triggers: a change to the config file or a policy file it names, or SIGHUP.
//!
//! Each file's directory is watched rather than the file itself because editors replace
//! files and Kubernetes swaps a ConfigMap's `..data` symlink; events are then kept only
//! when they touch one of the files (by name) or `..data`, so a log file or anything
//! else written beside the config never triggers a reload. The reloader compares
//! content versions, so a spurious trigger costs one read and parse, never a swap.

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

/// The name of the symlink Kubernetes swaps when a mounted ConfigMap or Secret changes.
const K8S_DATA: &str = "..data";

/// Whether an event on `path` concerns one of `names` (or the Kubernetes swap).
fn concerns(path: &Path, names: &[std::ffi::OsString]) -> bool {
    path.file_name()
        .is_some_and(|n| n == K8S_DATA || names.iter().any(|w| w == n))
}

/// Starts watching `files` (the config file first, then the files it names, such as
/// policies) and SIGHUP, on the current tokio runtime. Triggers that arrive within
/// `settle` of each other are coalesced into one.
pub fn triggers(
    files: &[std::path::PathBuf],
    settle: Duration,
) -> Result<mpsc::Receiver<Trigger>, String> {
    let (raw_tx, mut raw_rx) = mpsc::channel::<Trigger>(16);
    let mut dirs: Vec<std::path::PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    let file_tx = raw_tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() && ev.paths.iter().any(|p| concerns(p, &names)) {
                // Full means a reload is already pending, which is all we need.
                let _ = file_tx.try_send(Trigger::FileChanged);
            }
        }
    })
    .map_err(|e| format!("cannot start watching files: {e}"))?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_files_and_the_kubernetes_swap_concern_a_reload() {
        let names = vec![
            std::ffi::OsString::from("portcullis.yaml"),
            std::ffi::OsString::from("policy.yaml"),
        ];
        assert!(concerns(Path::new("/etc/p/portcullis.yaml"), &names));
        assert!(concerns(Path::new("/etc/p/policy.yaml"), &names));
        assert!(concerns(Path::new("/etc/p/..data"), &names));
        assert!(!concerns(Path::new("/etc/p/gateway.log"), &names));
        assert!(!concerns(Path::new("/etc/p/.portcullis.yaml.swp"), &names));
        assert!(!concerns(
            Path::new("/etc/p/..2026_12_01_00_00_00.123"),
            &names
        ));
    }
}
