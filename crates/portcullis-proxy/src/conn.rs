//! The connection gate in front of the public listener: at most
//! `admission.max_connections` client connections are served at once (one more is
//! closed as soon as it is accepted, before any byte is read), and every open one is
//! counted in `portcullis_connections_open`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use crate::metrics::{Metrics, Raised};
use crate::snapshot::Live;

/// Wraps the app that serves connections.
pub struct Admission<A> {
    /// What serves an admitted connection.
    pub inner: Arc<A>,
    /// The live config (the cap is read per connection, so a reload changes it).
    pub live: Live,
    /// `portcullis_connections_open` and `portcullis_connections_rejected_total`.
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Admission<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = Raised::new(self.metrics.connections_open.clone());
        let max = self.live.load().config.admission.max_connections;
        if self.metrics.connections_open.get() > max as i64 {
            self.metrics.connections_rejected.inc();
            return None;
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
