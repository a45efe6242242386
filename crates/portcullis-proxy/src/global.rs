//! Global rate limits: a limit marked `global` is counted in Redis, shared by every
//! replica, with one atomic GCRA step per check (a Lua script: one round trip, using
//! Redis's own clock so replicas' clocks need not agree). When Redis does not answer in
//! time, the replica's local limiter decides instead (docs/traffic.md).

use std::sync::OnceLock;
use std::time::Duration;

use portcullis_config::Redis;
use portcullis_traffic::LimitSpec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

/// One GCRA step. KEYS[1]: the bucket; ARGV[1]: microseconds between requests at the
/// steady rate (fractional); ARGV[2]: the burst tolerance in microseconds ((burst - 1)
/// intervals). Returns 0 when the request is admitted, else the microseconds to wait,
/// rounded up (a wait under a microsecond is still a wait). The stored value is the
/// bucket's theoretical arrival time, expiring once the bucket is full.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local earliest = tat - tolerance
if now < earliest then return math.ceil(earliest - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat),
  'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1))
return 0
";

/// The Redis that global limits share.
pub struct GlobalLimits {
    config: Redis,
    client: redis::Client,
    /// Connected on first use, from inside the request path's runtime; reconnects by
    /// itself.
    manager: OnceLock<ConnectionManager>,
    script: redis::Script,
}

impl GlobalLimits {
    /// A handle on `config`'s Redis; no connection is made until the first check.
    pub fn new(config: &Redis) -> Result<GlobalLimits, String> {
        let client = match &config.ca {
            // rediss:// with a private CA; without one, rediss:// trusts the system roots.
            Some((_, pem)) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(config.url.as_str()),
        }
        .map_err(|e| format!("redis.url is not a usable Redis URL: {e}"))?;
        Ok(GlobalLimits {
            config: config.clone(),
            client,
            manager: OnceLock::new(),
            script: redis::Script::new(GCRA),
        })
    }

    /// The settings it was built from (a reload keeps it when they are unchanged).
    pub fn config(&self) -> &Redis {
        &self.config
    }

    /// Counts one request under `parts` for `limit` of route `route_path`: `Ok(None)`
    /// admitted, `Ok(Some(wait))` refused; `Err` when Redis did not answer in time.
    pub async fn check(
        &self,
        route_path: &str,
        limit: &LimitSpec,
        parts: &[&str],
    ) -> Result<Option<Duration>, String> {
        let mut manager = match self.manager.get() {
            Some(m) => m.clone(),
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.config.timeout))
                    .set_response_timeout(Some(self.config.timeout))
                    .set_number_of_retries(1);
                let m = self
                    .client
                    .get_connection_manager_lazy(config)
                    .map_err(|e| e.to_string())?;
                self.manager.get_or_init(|| m).clone()
            }
        };
        // Fractional microseconds: a rate over 1,000,000/s, or one that does not divide
        // a second evenly, must not be rounded into a faster one.
        let interval = limit.rate.period.as_secs_f64() * 1e6 / f64::from(limit.rate.count);
        let tolerance = interval * f64::from(limit.burst.get() - 1);
        let key = self.key(route_path, limit, parts);
        let mut invocation = self.script.key(key);
        invocation
            .arg(format!("{interval:.6}"))
            .arg(format!("{tolerance:.6}"));
        let step = invocation.invoke_async::<i64>(&mut manager);
        match tokio::time::timeout(self.config.timeout, step).await {
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(wait)) => Ok(Some(Duration::from_micros(wait.unsigned_abs()))),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
        }
    }

    /// The bucket's key: the prefix, then a digest of the route, the limit (its name,
    /// rate and burst: a changed limit starts with full buckets, as local ones do) and
    /// the key parts. Every replica computes the same one; no subject appears in Redis.
    fn key(&self, route_path: &str, limit: &LimitSpec, parts: &[&str]) -> String {
        let mut h = Sha256::new();
        h.update(route_path.as_bytes());
        h.update([0]);
        h.update(limit.name.as_bytes());
        h.update([0]);
        h.update(limit.rate.count.to_be_bytes());
        h.update(limit.rate.period.as_nanos().to_be_bytes());
        h.update(limit.burst.get().to_be_bytes());
        for p in parts {
            h.update([0]);
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        let mut key = String::with_capacity(self.config.key_prefix.len() + 32);
        key.push_str(&self.config.key_prefix);
        for b in &digest[..16] {
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 15)]));
        }
        key
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, rate: &str, burst: u32) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            scope: portcullis_traffic::Scope::Route,
            rate: portcullis_traffic::Rate::parse(rate).expect("rate"),
            burst: std::num::NonZeroU32::new(burst).expect("burst"),
            tools: None,
            max_keys: 10,
            global: true,
        }
    }

    #[test]
    fn keys_are_stable_prefixed_digests_that_do_not_collide_by_concatenation() {
        let g = GlobalLimits::new(&Redis {
            url: "redis://127.0.0.1:1".into(),
            ca: None,
            timeout: Duration::from_millis(10),
            key_prefix: "pc:".into(),
        })
        .expect("url");
        let l = spec("per-caller", "10/s", 5);
        let a = g.key("/mcp", &l, &["iss", "alice"]);
        assert_eq!(a, g.key("/mcp", &l, &["iss", "alice"]));
        assert!(a.starts_with("pc:") && a.len() == 3 + 32, "{a}");
        assert!(!a.contains("alice"));
        assert_ne!(a, g.key("/mcp", &l, &["issa", "lice"]));
        assert_ne!(a, g.key("/other", &l, &["iss", "alice"]));
        assert_ne!(
            a,
            g.key("/mcp", &spec("per-caller", "10/s", 6), &["iss", "alice"]),
            "a changed limit has buckets of its own"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_within_the_timeout() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let g = GlobalLimits::new(&Redis {
            url: format!("redis://{dead}"),
            ca: None,
            timeout: Duration::from_millis(100),
            key_prefix: "pc:".into(),
        })
        .expect("url");
        let spec = spec("l", "1/s", 1);
        let started = std::time::Instant::now();
        assert!(g.check("/mcp", &spec, &[]).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
