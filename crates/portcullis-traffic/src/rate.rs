//! Rate limits: one governor GCRA limiter per configured limit, keyed by whatever the
//! limit's scope names (nothing, a principal, a tool, or both). Keys are 64-bit hashes,
//! so a key costs a few bytes whatever the subject's length; idle keys are pruned and
//! the number of keys is capped (past the cap, new keys share one overflow bucket).

use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

/// A rate: `count` requests per `period`, e.g. `10/s`, `600/m`, `5/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests admitted per period.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h` (or `second`, `minute`, `hour`) or `N/<duration>`
    /// (`5/10s`, `100/500ms`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (n, per) = text.split_once('/').ok_or_else(|| {
            format!("`{text}` is not a rate: write it as N/s, N/m, N/h or N/<duration>")
        })?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` in `{text}` is not a whole number"))?;
        if count == 0 {
            return Err(format!(
                "`{text}` admits nothing: the count must be at least 1"
            ));
        }
        let period = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other)
                .map_err(|e| format!("`{other}` in `{text}` is not a period: {e}"))?,
        };
        // governor replenishes one request every period/count; it must not round to zero.
        if period.as_nanos() < u128::from(count) {
            return Err(format!(
                "`{text}` is faster than one request per nanosecond"
            ));
        }
        if period > Duration::from_secs(86_400 * 365) {
            return Err(format!("`{text}`: the period must be at most a year"));
        }
        Ok(Rate { count, period })
    }

    /// The time between two admitted requests at the steady rate.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

/// What a limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bucket for the whole route.
    Route,
    /// One bucket per principal (subject and issuer, API key name, or client IP).
    Principal,
    /// One bucket per tool name (tools/call only).
    Tool,
    /// One bucket per principal and tool (tools/call only).
    PrincipalTool,
}

impl Scope {
    /// Parses the config word.
    pub fn parse(text: &str) -> Option<Scope> {
        Some(match text {
            "route" => Scope::Route,
            "principal" => Scope::Principal,
            "tool" => Scope::Tool,
            "principal_tool" => Scope::PrincipalTool,
            _ => return None,
        })
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Route => "route",
            Scope::Principal => "principal",
            Scope::Tool => "tool",
            Scope::PrincipalTool => "principal_tool",
        }
    }

    /// Whether only tools/call requests count against the limit.
    pub fn tools_only(self) -> bool {
        matches!(self, Scope::Tool | Scope::PrincipalTool)
    }
}

/// Tool-name globs a limit is restricted to.
#[derive(Debug, Clone)]
pub struct ToolSet {
    patterns: Vec<String>,
    set: globset::GlobSet,
}

impl ToolSet {
    /// Compiles the globs, written as in policies: `*` any run of characters, `?` one,
    /// `[ab]` a class, `{a,b}` alternatives, `\\` escapes.
    pub fn new(patterns: &[String]) -> Result<ToolSet, String> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            let g = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("`{p}` is not a valid glob: {e}"))?;
            b.add(g);
        }
        let set = b.build().map_err(|e| e.to_string())?;
        Ok(ToolSet {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// Whether `tool` matches any glob.
    pub fn matches(&self, tool: &str) -> bool {
        self.set.is_match(tool)
    }

    /// The globs as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// One configured limit.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// Its name, in refusals, logs and metrics.
    pub name: String,
    /// What is counted separately.
    pub scope: Scope,
    /// The steady rate.
    pub rate: Rate,
    /// Requests admitted at once after an idle spell.
    pub burst: NonZeroU32,
    /// When set, only tools/call of these tools count.
    pub tools: Option<ToolSet>,
    /// The most keys tracked; past it new keys share one overflow bucket.
    pub max_keys: usize,
    /// Enforced across replicas (through Redis); this limiter is then the fallback.
    pub global: bool,
}

impl LimitSpec {
    /// Whether two specs count the same way (so a reload may keep the limiter's state).
    pub fn same_counting(&self, other: &LimitSpec) -> bool {
        self.name == other.name
            && self.scope == other.scope
            && self.rate == other.rate
            && self.burst == other.burst
            && self.max_keys == other.max_keys
            && self.global == other.global
            && self.tools.as_ref().map(ToolSet::patterns)
                == other.tools.as_ref().map(ToolSet::patterns)
    }
}

/// A rate limiter for one [`LimitSpec`].
pub struct Limiter {
    spec: LimitSpec,
    limiter: RateLimiter<u64, CappedStore, DefaultClock>,
    clock: DefaultClock,
    hasher: std::hash::RandomState,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("spec", &self.spec).finish()
    }
}

impl Limiter {
    /// A limiter with no keys yet.
    pub fn new(spec: LimitSpec) -> Limiter {
        // Replenishing one request every period/count; Rate::parse keeps that above zero.
        let quota = Quota::with_period(spec.rate.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(spec.burst);
        let clock = DefaultClock::default();
        let store = CappedStore {
            keys: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            max_keys: spec.max_keys.max(1),
        };
        Limiter {
            limiter: RateLimiter::new(quota, store, clock.clone()),
            clock,
            spec,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The spec it enforces.
    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Counts one request under the key made of `parts`; `Err` holds how long until
    /// the limit would admit it.
    pub fn check(&self, parts: &[&str]) -> Result<(), Duration> {
        let mut h = self.hasher.build_hasher();
        for p in parts {
            p.hash(&mut h);
        }
        let key = h.finish();
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Keys tracked now (the overflow bucket not included).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Drops keys whose bucket is full again (indistinguishable from a new key). The
    /// gateway calls it from a background task every few seconds, off the request path.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// governor's DashMap store with a cap: a key not yet tracked while `max_keys` are
/// counts against one shared overflow bucket instead of growing the map.
struct CappedStore {
    keys: DashMapStateStore<u64>,
    overflow: InMemoryState,
    max_keys: usize,
}

impl StateStore for CappedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.keys.contains_key(key) || self.keys.len() < self.max_keys {
            self.keys.measure_and_replace(key, f)
        } else {
            self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
        }
    }
}

impl ShrinkableKeyedStateStore<u64> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.keys, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.keys);
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: &str, burst: u32, max_keys: usize) -> LimitSpec {
        LimitSpec {
            name: "t".into(),
            scope: Scope::Principal,
            rate: Rate::parse(rate).expect("rate"),
            burst: NonZeroU32::new(burst).expect("burst"),
            tools: None,
            max_keys,
            global: false,
        }
    }

    #[test]
    fn rates_parse_words_and_durations() {
        assert_eq!(
            Rate::parse("10/s").map(|r| r.interval()),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            Rate::parse(" 60 / m ").map(|r| r.period),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            Rate::parse("5/10s").map(|r| r.interval()),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            Rate::parse("1/hour").map(|r| r.period),
            Ok(Duration::from_secs(3600))
        );
        for bad in [
            "",
            "10",
            "0/s",
            "-1/s",
            "x/s",
            "10/",
            "10/fortnight",
            "1/0s",
            "10/s/s",
            "99999999999/s",
            "2000000000/1ns",
            "1/1000y",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_burst_passes_then_the_steady_rate_holds_with_the_right_wait() {
        let l = Limiter::new(spec("1/s", 3, 10));
        for i in 0..3 {
            assert!(l.check(&["alice"]).is_ok(), "burst call {i}");
        }
        let wait = l.check(&["alice"]).expect_err("over the burst");
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check(&["bob"]).is_ok(), "another key has its own bucket");
    }

    #[test]
    fn keys_made_of_parts_do_not_collide_by_concatenation() {
        let l = Limiter::new(spec("1/h", 1, 10));
        assert!(l.check(&["ab", "c"]).is_ok());
        assert!(l.check(&["a", "bc"]).is_ok(), "a distinct key");
        assert!(l.check(&["ab", "c"]).is_err());
    }

    #[test]
    fn past_the_cap_new_keys_share_one_overflow_bucket() {
        let l = Limiter::new(spec("1/h", 1, 2));
        assert!(l.check(&["a"]).is_ok());
        assert!(l.check(&["b"]).is_ok());
        assert_eq!(l.keys(), 2);
        assert!(
            l.check(&["c"]).is_ok(),
            "the overflow bucket's first request"
        );
        assert!(l.check(&["d"]).is_err(), "shares c's bucket");
        assert_eq!(l.keys(), 2, "the map did not grow");
        assert!(
            l.check(&["a"]).is_err(),
            "tracked keys keep their own state"
        );
    }

    #[test]
    fn pruning_drops_only_keys_whose_bucket_refilled() {
        let l = Limiter::new(spec("1000/s", 1, 100));
        let slow = Limiter::new(spec("1/h", 1, 100));
        for i in 0..50 {
            let k = i.to_string();
            let _ = l.check(&[&k]);
            let _ = slow.check(&[&k]);
        }
        std::thread::sleep(Duration::from_millis(5));
        l.prune();
        slow.prune();
        assert_eq!(l.keys(), 0, "1 ms buckets refilled");
        assert_eq!(slow.keys(), 50, "hour-long buckets are still drained");
    }

    #[test]
    fn tool_sets_match_globs_as_policies_do() {
        let t = ToolSet::new(&["search_*".into(), "{get,put}_file".into()]).expect("globs");
        assert!(t.matches("search_web"));
        assert!(!t.matches("web_search"));
        assert!(t.matches("put_file"));
        assert!(!t.matches("rm_file"));
        assert!(ToolSet::new(&["[oops".into()]).is_err());
    }
}
