//! Fetches the JWKS URLs that the loaded configs name: at start, every refresh
//! interval, and when a token with an unknown `kid` asks for it (the rate limit and the
//! sharing of one fetch among callers live in `portcullis_auth::RemoteJwks`). A failed
//! fetch keeps the last good set serving; it is logged and counted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use portcullis_auth::{JwksRegistry, RemoteJwks};

use crate::metrics::Metrics;

/// The longest one JWKS fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document accepted. Real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How often the fetcher looks for sets that are due, between wake-ups.
const TICK: Duration = Duration::from_secs(1);

/// The background service that keeps every JWKS URL's key set fresh.
#[derive(Clone)]
pub struct JwksFetcher {
    metrics: Arc<Metrics>,
    client: reqwest::Client,
}

impl JwksFetcher {
    /// A fetcher reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Result<JwksFetcher, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(JwksFetcher { metrics, client })
    }

    /// Fetches `set`, which the caller has marked as being fetched.
    async fn fetch(&self, set: &RemoteJwks) {
        let url = set.url();
        let guard = Unfinished(set);
        let body = self.get(url).await;
        std::mem::forget(guard);
        match set.finish_fetch(body.as_deref().map_err(Clone::clone), Instant::now()) {
            Ok(n) => {
                tracing::debug!(url, keys = n, "fetched JWKS");
                self.count(url, "success");
                self.metrics
                    .jwks_keys
                    .with_label_values(&[url])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.metrics
                    .jwks_last_success
                    .with_label_values(&[url])
                    .set(unix);
            }
            Err(e) => {
                let serving = set.keys().map_or(0, |k| k.len());
                tracing::warn!(
                    url,
                    error = %e,
                    keys_still_served = serving,
                    "JWKS fetch failed; the last good key set keeps serving"
                );
                self.count(url, "failure");
            }
        }
    }

    fn count(&self, url: &str, result: &str) {
        self.metrics
            .jwks_fetches
            .with_label_values(&[url, result])
            .inc();
    }

    /// The document at `url`: status 200 and at most [`MAX_JWKS_BYTES`] of UTF-8.
    async fn get(&self, url: &str) -> Result<String, String> {
        let mut resp = self
            .client
            .get(url)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("answered HTTP {}", resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())
    }

    /// Drops the metric series of URLs no config uses any more.
    fn forget(&self, url: &str) {
        let m = &self.metrics;
        let _ = m.jwks_keys.remove_label_values(&[url]);
        let _ = m.jwks_last_success.remove_label_values(&[url]);
        for result in ["success", "failure"] {
            let _ = m.jwks_fetches.remove_label_values(&[url, result]);
        }
    }
}

/// Ends a fetch that never finished (its task panicked or was cancelled), so the set is
/// not left marked as being fetched forever.
struct Unfinished<'a>(&'a RemoteJwks);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .finish_fetch(Err("the fetch was abandoned".into()), Instant::now());
    }
}

#[async_trait]
impl BackgroundService for JwksFetcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let registry = JwksRegistry::global();
        let mut known: HashSet<String> = HashSet::new();
        loop {
            let now = Instant::now();
            let live = registry.live();
            let urls: HashSet<String> = live.iter().map(|s| s.url().to_owned()).collect();
            for gone in known.difference(&urls) {
                self.forget(gone);
            }
            known = urls;
            for set in live.into_iter().filter(|s| s.try_begin_fetch(now)) {
                // One task per fetch, so a slow identity provider holds back no other.
                let me = self.clone();
                tokio::spawn(async move { me.fetch(&set).await });
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = registry.woken() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_speaks_https_and_reports_unreachable_providers() {
        let f = JwksFetcher::new(Arc::new(Metrics::new())).expect("client with TLS");
        for url in ["https://127.0.0.1:1/jwks", "http://127.0.0.1:1/jwks"] {
            let e = f.get(url).await.expect_err("nothing listens on port 1");
            assert!(e.contains("request failed"), "{url}: {e}");
        }
    }
}
