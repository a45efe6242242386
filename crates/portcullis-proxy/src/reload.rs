//! Hot reload: on a file change or SIGHUP, load and validate the config off the hot
//! path, build a new snapshot and swap it in. A bad file is logged with its error and
//! the old snapshot keeps serving; requests in flight finish on the snapshot they began.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use portcullis_config::watch::{self, Trigger};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::snapshot::{Live, Snapshot};

/// Coalesces the bursts of events an editor or a ConfigMap update produces.
const SETTLE: Duration = Duration::from_millis(100);

/// The background service that reloads the config.
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// Where new snapshots go.
    pub live: Live,
    /// Reload counters and the live version.
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Loads the file and swaps it in if it validates and changed (SIGHUP always swaps).
    pub async fn reload(&self, trigger: Trigger) {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || portcullis_config::load(&path)).await;
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let live = self.live.load();
                error!(error = %e, trigger = trigger.as_str(), live_version = %live.config.version,
                    "config reload refused; the previous config keeps serving");
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                return;
            }
            Err(e) => {
                error!(error = %e, "config reload task failed");
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                return;
            }
        };
        let old = self.live.load_full();
        if trigger == Trigger::FileChanged && old.config.version == config.version {
            self.metrics.reloads.with_label_values(&["unchanged"]).inc();
            return;
        }
        if old.config.public_addr != config.public_addr
            || old.config.admin_addr != config.admin_addr
            || old.config.threads != config.threads
        {
            warn!("listeners and server.threads changed in the file; they take effect on restart");
        }
        let version = config.version.clone();
        let snapshot = match Snapshot::build(config, Some(&old)) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "config reload failed; the previous config keeps serving");
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                return;
            }
        };
        self.live.store(Arc::new(snapshot));
        self.metrics.set_config_version(&version);
        self.metrics.reloads.with_label_values(&["success"]).inc();
        info!(version = %version, previous = %old.config.version, trigger = trigger.as_str(),
            "config reloaded");
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Directories of the policy files the config names: editing a policy reloads.
        let mut policy_dirs: Vec<std::path::PathBuf> = self
            .live
            .load()
            .config
            .routes
            .iter()
            .filter_map(|r| r.policy_path.as_ref()?.parent().map(|d| d.to_owned()))
            .collect();
        policy_dirs.sort();
        policy_dirs.dedup();
        let mut triggers = match watch::triggers(&self.path, &policy_dirs, SETTLE) {
            Ok(rx) => {
                self.metrics.watching.set(1);
                info!(config = %self.path.display(), "watching the config file and SIGHUP for reloads");
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
                    Some(t) => self.reload(t).await,
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}
