//! Hot reload: on a file change or SIGHUP, load and validate the config off the hot
//! path, build a new snapshot and swap it in. A bad file is logged with its error and
//! the old snapshot keeps serving; requests in flight finish on the snapshot they began.
//! Only the config file and the policy files it names are watched (a log file written
//! beside them triggers nothing), and a refused file is logged once per distinct
//! content, not on every event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use portcullis_config::watch::{self, Trigger};
use tracing::{error, info, warn};

use crate::snapshot::{Live, Shared, Snapshot};

/// Coalesces the bursts of events an editor or a ConfigMap update produces.
const SETTLE: Duration = Duration::from_millis(100);

/// The background service that reloads the config.
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// Where new snapshots go.
    pub live: Live,
    /// The connection pool and the metrics every snapshot shares.
    pub shared: Shared,
    /// A digest of the last refused file and its error, so one bad edit is logged once.
    pub refused: parking_lot::Mutex<Option<u64>>,
}

impl Reloader {
    /// Loads the file and swaps it in if it validates and changed (SIGHUP always swaps).
    pub async fn reload(&self, trigger: Trigger) {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || portcullis_config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let text = e.to_string();
                let digest = refusal_digest(&self.path, &text);
                let mut last = self.refused.lock();
                if *last != Some(digest) || trigger == Trigger::Sighup {
                    *last = Some(digest);
                    let live = self.live.load();
                    error!(error = %text, trigger = trigger.as_str(), live_version = %live.config.version,
                        "config reload refused; the previous config keeps serving");
                }
                self.shared
                    .metrics
                    .reloads
                    .with_label_values(&["failure"])
                    .inc();
                return;
            }
            Err(e) => {
                error!(error = %e, "config reload task failed");
                self.shared
                    .metrics
                    .reloads
                    .with_label_values(&["failure"])
                    .inc();
                return;
            }
        };
        *self.refused.lock() = None;
        let old = self.live.load_full();
        if trigger == Trigger::FileChanged && old.config.version == config.version {
            self.shared
                .metrics
                .reloads
                .with_label_values(&["unchanged"])
                .inc();
            return;
        }
        if old.config.public_addr != config.public_addr
            || old.config.tls.as_ref().map(|t| t.addr) != config.tls.as_ref().map(|t| t.addr)
            || old.config.http.h2c != config.http.h2c
            || old.config.admin_addr != config.admin_addr
            || old.config.threads != config.threads
        {
            warn!("listeners, http.h2c and server.threads changed in the file; they take effect on restart");
        }
        let version = config.version.clone();
        let snapshot = match Snapshot::build(config, Some(&old), &self.shared) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "config reload failed; the previous config keeps serving");
                self.shared
                    .metrics
                    .reloads
                    .with_label_values(&["failure"])
                    .inc();
                return;
            }
        };
        self.shared.metrics.set_certificates(&snapshot.config);
        self.live.store(Arc::new(snapshot));
        self.shared.metrics.set_config_version(&version);
        self.shared
            .metrics
            .reloads
            .with_label_values(&["success"])
            .inc();
        info!(version = %version, previous = %old.config.version, trigger = trigger.as_str(),
            "config reloaded");
    }
}

/// The files whose change reloads: the config file and the policy, certificate, key
/// and CA files it names (a rotated certificate is a reload like any other).
fn watched(path: &Path, live: &Live) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    files.extend(live.load().config.named_files());
    files.sort();
    files.dedup();
    files
}

/// A digest of a refused reload: the file's bytes and the error.
fn refusal_digest(path: &Path, error: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).unwrap_or_default().hash(&mut h);
    error.hash(&mut h);
    h.finish()
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut files = watched(&self.path, &self.live);
        let mut triggers = match watch::triggers(&files, SETTLE) {
            Ok(rx) => {
                self.shared.metrics.watching.set(1);
                info!(config = %self.path.display(), "watching the config file, its policy and TLS files and SIGHUP for reloads");
                rx
            }
            Err(e) => {
                error!(error = %e, "hot reload disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                t = triggers.recv() => match t {
                    Some(t) => {
                        self.reload(t).await;
                        // A reload may name other policy files: watch those from now on.
                        let now = watched(&self.path, &self.live);
                        if now != files {
                            match watch::triggers(&now, SETTLE) {
                                Ok(rx) => {
                                    triggers = rx;
                                    files = now;
                                }
                                Err(e) => warn!(error = %e, "cannot watch the new policy files"),
                            }
                        }
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}
