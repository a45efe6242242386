//! Key sets fetched from an identity provider's JWKS URL: the last good set, when it was
//! fetched, whether a fetch is due, and the single, rate-limited refetch that a token
//! with an unknown `kid` may ask for. The fetching itself lives in the gateway, which
//! owns the HTTP client and the runtime; this type holds the state both sides share, so
//! the rules are testable without a network.
//!
//! Sets are shared by URL through a process-wide [`JwksRegistry`], so a config reload
//! keeps the keys it already has instead of starting cold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::keys::Keys;

/// How a remote key set is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JwksSchedule {
    /// How often the set is fetched in the background.
    pub refresh_interval: Duration,
    /// The least time between two fetches that were not background refreshes: a
    /// refetch for an unknown `kid`, or a retry after a failed fetch. This bounds the
    /// load that tokens with made-up key ids can put on the identity provider.
    pub min_refetch_interval: Duration,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    in_flight: bool,
    wanted: bool,
    keys_fingerprint: Option<[u8; 32]>,
}

/// One JWKS URL and its last good key set.
pub struct RemoteJwks {
    url: String,
    schedule: JwksSchedule,
    keys: ArcSwapOption<Keys>,
    /// Bumped when a fetch brings a set whose usable keys differ from the one before,
    /// so verified tokens cached under the old set are checked again.
    generation: AtomicU64,
    state: Mutex<FetchState>,
    /// Counts finished fetches (good or bad); waiters for a refetch watch it.
    finished: watch::Sender<u64>,
    wake: Arc<Notify>,
}

/// Why the keys of a remote set are not usable (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefetchOutcome {
    /// A fetch finished while waiting: look the key up again.
    Fetched,
    /// A fetch ran too recently; this one was not made (rate limit).
    RateLimited,
    /// No fetch finished within the wait.
    TimedOut,
}

impl RemoteJwks {
    fn new(url: String, schedule: JwksSchedule, wake: Arc<Notify>) -> RemoteJwks {
        RemoteJwks {
            url,
            schedule,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            state: Mutex::new(FetchState::default()),
            finished: watch::Sender::new(0),
            wake,
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How this set is kept fresh.
    pub fn schedule(&self) -> JwksSchedule {
        self.schedule
    }

    /// The last good key set, if any fetch has succeeded.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.load_full()
    }

    /// Changes whenever the key set changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// When the set was last fetched successfully.
    pub fn last_success(&self) -> Option<Instant> {
        self.state.lock().last_success
    }

    /// Whether the fetcher should fetch this set at `now`: never fetched; a refetch was
    /// asked for; the refresh interval has passed since the last good fetch; or the set
    /// has never been fetched successfully. Anything but the first and the periodic
    /// refresh waits `min_refetch_interval` after the last attempt.
    pub fn due(&self, now: Instant) -> bool {
        let st = self.state.lock();
        self.due_locked(&st, now)
    }

    fn due_locked(&self, st: &FetchState, now: Instant) -> bool {
        if st.in_flight {
            return false;
        }
        let Some(last_attempt) = st.last_attempt else {
            return true;
        };
        let since_attempt = now.saturating_duration_since(last_attempt);
        let rested = since_attempt >= self.schedule.min_refetch_interval;
        match st.last_success {
            None => rested,
            Some(ok) => {
                let stale = now.saturating_duration_since(ok) >= self.schedule.refresh_interval;
                // A failing refresh retries at the rate-limited pace, not every tick.
                let periodic = stale
                    && (ok >= last_attempt || since_attempt >= self.schedule.min_refetch_interval);
                periodic || (st.wanted && rested)
            }
        }
    }

    /// Marks a fetch as started at `now` (the fetcher calls this before its request).
    pub fn begin_fetch(&self, now: Instant) {
        let mut st = self.state.lock();
        Self::begin(&mut st, now);
    }

    /// Starts a fetch if one is [`due`](RemoteJwks::due), in one step, so that of
    /// several fetchers looking at once exactly one fetches.
    pub fn try_begin_fetch(&self, now: Instant) -> bool {
        let mut st = self.state.lock();
        if !self.due_locked(&st, now) {
            return false;
        }
        Self::begin(&mut st, now);
        true
    }

    fn begin(st: &mut FetchState, now: Instant) {
        st.in_flight = true;
        st.wanted = false;
        st.last_attempt = Some(now);
    }

    /// Records a fetch's result: a JWKS document's text, or why the fetch failed. A
    /// failure keeps the last good set serving. Returns the number of keys now held.
    pub fn finish_fetch(
        &self,
        result: Result<&str, String>,
        now: Instant,
    ) -> Result<usize, String> {
        let outcome = result.and_then(Keys::from_jwks_json_fingerprinted);
        let out = {
            let mut st = self.state.lock();
            st.in_flight = false;
            match outcome {
                Ok((keys, hash)) => {
                    st.last_success = Some(now);
                    let n = keys.len();
                    if st.keys_fingerprint != Some(hash) {
                        st.keys_fingerprint = Some(hash);
                        self.keys.store(Some(Arc::new(keys)));
                        self.generation.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        };
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    /// Asks for a fetch because a token named a key id this set does not hold, and
    /// waits up to `wait` for a fetch to finish. Several callers share one fetch; a
    /// fetch that started less than `min_refetch_interval` ago is not repeated.
    pub async fn refetch(&self, wait: Duration) -> RefetchOutcome {
        // Subscribe before asking, so a fetch that finishes in between is not missed.
        let mut finished = self.finished.subscribe();
        {
            let mut st = self.state.lock();
            if !st.in_flight {
                let recent = st
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < self.schedule.min_refetch_interval);
                if recent {
                    return RefetchOutcome::RateLimited;
                }
                st.wanted = true;
            }
        }
        self.wake.notify_one();
        match tokio::time::timeout(wait, finished.changed()).await {
            Ok(Ok(())) => RefetchOutcome::Fetched,
            _ => RefetchOutcome::TimedOut,
        }
    }
}

/// Every remote key set in use, by URL and schedule. Entries live as long as some
/// config holds them (the registry keeps only weak references).
#[derive(Default)]
pub struct JwksRegistry {
    sets: Mutex<HashMap<(String, JwksSchedule), Weak<RemoteJwks>>>,
    wake: Arc<Notify>,
}

impl JwksRegistry {
    /// The process-wide registry the config loader and the fetcher share.
    pub fn global() -> &'static JwksRegistry {
        static GLOBAL: std::sync::OnceLock<JwksRegistry> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(JwksRegistry::default)
    }

    /// The set for `url` with `schedule`: the one already in use, or a new, empty one.
    pub fn get(&self, url: &str, schedule: JwksSchedule) -> Arc<RemoteJwks> {
        let mut sets = self.sets.lock();
        let key = (url.to_owned(), schedule);
        if let Some(live) = sets.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let set = Arc::new(RemoteJwks::new(url.to_owned(), schedule, self.wake.clone()));
        sets.insert(key, Arc::downgrade(&set));
        self.wake.notify_one();
        set
    }

    /// Every set still in use (and forgets the rest).
    pub fn live(&self) -> Vec<Arc<RemoteJwks>> {
        let mut sets = self.sets.lock();
        sets.retain(|_, w| w.strong_count() > 0);
        sets.values().filter_map(Weak::upgrade).collect()
    }

    /// Resolves when a set was added or a refetch was asked for.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../tests/keys/jwks.json");

    fn schedule(refresh: u64, min: u64) -> JwksSchedule {
        JwksSchedule {
            refresh_interval: Duration::from_secs(refresh),
            min_refetch_interval: Duration::from_secs(min),
        }
    }

    #[test]
    fn fetches_fall_due_first_then_on_refresh_and_failures_retry_at_the_limited_pace() {
        let r = JwksRegistry::default();
        let set = r.get("http://idp/jwks", schedule(300, 10));
        let t0 = Instant::now();
        assert!(set.due(t0), "never fetched");
        set.begin_fetch(t0);
        assert!(!set.due(t0), "in flight");
        assert_eq!(set.finish_fetch(Ok(JWKS), t0), Ok(2));
        assert!(set.keys().is_some());
        assert!(!set.due(t0 + Duration::from_secs(299)));
        assert!(set.due(t0 + Duration::from_secs(300)), "refresh");

        let t1 = t0 + Duration::from_secs(300);
        set.begin_fetch(t1);
        assert!(set.finish_fetch(Err("down".into()), t1).is_err());
        assert!(set.keys().is_some(), "the last good set keeps serving");
        assert!(!set.due(t1 + Duration::from_secs(9)), "retry waits");
        assert!(set.due(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn a_malformed_document_keeps_the_old_set_and_only_changes_bump_the_generation() {
        let r = JwksRegistry::default();
        let set = r.get("http://idp/jwks", schedule(300, 0));
        let t = Instant::now();
        set.begin_fetch(t);
        set.finish_fetch(Ok(JWKS), t).expect("good");
        let g = set.generation();
        set.begin_fetch(t);
        set.finish_fetch(Ok(JWKS), t).expect("same again");
        assert_eq!(set.generation(), g, "same document, same generation");
        let reordered: serde_json::Value = serde_json::from_str(JWKS).expect("json");
        let mut keys = reordered["keys"].as_array().expect("keys").clone();
        keys.reverse();
        let reordered = serde_json::json!({"keys": keys, "extra": 1}).to_string();
        set.begin_fetch(t);
        set.finish_fetch(Ok(&reordered), t).expect("reordered");
        assert_eq!(
            set.generation(),
            g,
            "same keys in another order, same generation"
        );
        for bad in ["", "{", "{\"keys\":[]}", "[1,2]", &"x".repeat(10_000)] {
            set.begin_fetch(t);
            assert!(set.finish_fetch(Ok(bad), t).is_err(), "{bad:.20}");
            assert_eq!(set.keys().map(|k| k.len()), Some(2), "nothing lost");
        }
        assert_eq!(set.generation(), g);
    }

    #[test]
    fn the_registry_hands_out_one_set_per_url_while_it_is_in_use() {
        let r = JwksRegistry::default();
        let a = r.get("http://idp/jwks", schedule(300, 10));
        let b = r.get("http://idp/jwks", schedule(300, 10));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(r.live().len(), 1);
        drop((a, b));
        assert!(r.live().is_empty(), "unused sets are forgotten");
    }

    #[tokio::test]
    async fn refetches_are_shared_and_rate_limited() {
        let r = Arc::new(JwksRegistry::default());
        let set = r.get("http://idp/jwks", schedule(300, 3600));
        // A fetcher that serves one request.
        let fetcher = {
            let (r, set) = (r.clone(), set.clone());
            tokio::spawn(async move {
                r.woken().await;
                let now = Instant::now();
                assert!(set.try_begin_fetch(now));
                assert!(!set.try_begin_fetch(now), "one fetch at a time");
                set.finish_fetch(Ok(JWKS), now).expect("good");
            })
        };
        let wait = Duration::from_secs(10);
        let (a, b) = tokio::join!(set.refetch(wait), set.refetch(wait));
        assert_eq!((a, b), (RefetchOutcome::Fetched, RefetchOutcome::Fetched));
        fetcher.await.expect("fetcher");
        assert_eq!(
            set.refetch(wait).await,
            RefetchOutcome::RateLimited,
            "a second unknown kid within the interval does not fetch again"
        );
    }
}
