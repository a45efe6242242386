//! The traffic-control keys: `routes[].rate_limits`, `upstreams.<n>.concurrency`,
//! `upstreams.<n>.tools`, `upstreams.<n>.breaker`, `admission` and `redis`, compiled
//! into the specs `portcullis-traffic` enforces.

use std::num::NonZeroU32;
use std::time::Duration;

use portcullis_traffic::{BreakerSpec, GateSpec, LimitSpec, Rate, Scope as Per, ToolSet};

use super::MAX_COUNT;
use crate::error::ConfigError;
use crate::file::{
    AdmissionFile, BreakerFile, GateFile, RateLimitFile, RedisFile, ToolTrafficFile,
};
use crate::model::{Admission, Deadline, Redis, ToolTraffic};
use crate::scope::Scope;

/// How long a call waits in a gate's queue when `queue_timeout` is not set.
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn admission(at: &Scope<'_>, f: &AdmissionFile) -> Result<Admission, ConfigError> {
    for (k, v) in [
        ("max_connections", f.max_connections),
        ("max_requests", f.max_requests),
        ("max_streams", f.max_streams),
    ] {
        if v == 0 || v > MAX_COUNT {
            return Err(at
                .key(k)
                .err(format!("{k} must be between 1 and {MAX_COUNT}")));
        }
    }
    Ok(Admission {
        max_connections: f.max_connections,
        max_requests: f.max_requests,
        max_streams: f.max_streams,
    })
}

pub(super) fn redis(at: &Scope<'_>, r: &RedisFile) -> Result<Redis, ConfigError> {
    let url = match (&r.url, &r.url_env) {
        (Some(u), None) => u.clone(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            at.key("url_env")
                .err(format!("the environment variable {var} is not set"))
        })?,
        _ => return Err(at.err("give exactly one of url, url_env")),
    };
    let key = if r.url.is_some() { "url" } else { "url_env" };
    let tls = url.starts_with("rediss://");
    if !tls && !url.starts_with("redis://") {
        return Err(at
            .key(key)
            .err("the Redis URL must start with redis:// or rediss:// (TLS)"));
    }
    let ca = match &r.ca_file {
        Some(_) if !tls => return Err(at.key("ca_file").err("ca_file needs a rediss:// URL")),
        Some(p) => {
            let at_ca = at.key("ca_file");
            let path = at_ca.resolve(p);
            portcullis_tls::load_ca(&path).map_err(|e| at_ca.err(e.to_string()))?;
            let pem = std::fs::read(&path)
                .map_err(|e| at_ca.err(format!("{}: cannot read: {e}", path.display())))?;
            Some((path, pem))
        }
        None => None,
    };
    if r.timeout.is_zero() {
        return Err(at.key("timeout").err("timeout must be more than zero"));
    }
    Ok(Redis {
        url,
        ca,
        timeout: r.timeout,
        key_prefix: r.key_prefix.clone(),
    })
}

pub(super) fn rate_limits(
    at: &Scope<'_>,
    limits: &[RateLimitFile],
    has_redis: bool,
) -> Result<Vec<LimitSpec>, ConfigError> {
    let mut out: Vec<LimitSpec> = Vec::with_capacity(limits.len());
    for (j, l) in limits.iter().enumerate() {
        let at = at.index(j);
        let scope = Per::parse(&l.per).ok_or_else(|| {
            at.key("per").err(format!(
                "`{}` is not a scope: use route, principal, tool or principal_tool",
                l.per
            ))
        })?;
        let rate = Rate::parse(&l.rate).map_err(|e| at.key("rate").err(e))?;
        // Unset, one period's worth (capped like a written one).
        let burst = l.burst.unwrap_or_else(|| rate.count.min(MAX_COUNT as u32));
        let burst = NonZeroU32::new(burst)
            .filter(|b| b.get() as usize <= MAX_COUNT)
            .ok_or_else(|| {
                at.key("burst")
                    .err(format!("burst must be between 1 and {MAX_COUNT}"))
            })?;
        if l.max_keys == 0 || l.max_keys > 10_000_000 {
            return Err(at
                .key("max_keys")
                .err("max_keys must be between 1 and 10000000"));
        }
        let tools = if l.tools.is_empty() {
            None
        } else {
            if l.tools.iter().any(String::is_empty) {
                return Err(at
                    .key("tools")
                    .err("an empty pattern matches nothing; use \"*\" for any tool"));
            }
            Some(ToolSet::new(&l.tools).map_err(|e| at.key("tools").err(e))?)
        };
        let name = l.name.clone().unwrap_or_else(|| scope.as_str().to_owned());
        if name.is_empty() {
            return Err(at.key("name").err("a limit's name must not be empty"));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(at.key("name").err(format!(
                "two limits of this route are named `{name}`; give each its own `name`"
            )));
        }
        if l.global && !has_redis {
            return Err(at
                .key("global")
                .err("a global limit needs a `redis:` block (where replicas share their counts)"));
        }
        out.push(LimitSpec {
            name,
            scope,
            rate,
            burst,
            tools,
            max_keys: l.max_keys,
            global: l.global,
        });
    }
    Ok(out)
}

pub(super) fn breaker(at: &Scope<'_>, b: &BreakerFile) -> Result<BreakerSpec, ConfigError> {
    if b.consecutive_failures == 0 {
        return Err(at
            .key("consecutive_failures")
            .err("consecutive_failures must be at least 1"));
    }
    if let Some(r) = b.error_rate {
        if !(r > 0.0 && r <= 1.0) {
            return Err(at
                .key("error_rate")
                .err("error_rate must be more than 0 and at most 1"));
        }
    }
    if b.min_calls == 0 {
        return Err(at.key("min_calls").err("min_calls must be at least 1"));
    }
    for (k, d) in [("window", b.window), ("cool_down", b.cool_down)] {
        if d.is_zero() {
            return Err(at.key(k).err(format!("{k} must be more than zero")));
        }
    }
    if b.half_open_calls == 0 {
        return Err(at
            .key("half_open_calls")
            .err("half_open_calls must be at least 1"));
    }
    Ok(BreakerSpec {
        consecutive_failures: b.consecutive_failures,
        error_rate: b.error_rate,
        min_calls: b.min_calls,
        window: b.window,
        cool_down: b.cool_down,
        half_open_calls: b.half_open_calls,
    })
}

pub(super) fn gate(at: &Scope<'_>, g: &GateFile) -> Result<GateSpec, ConfigError> {
    spec(at, g.max_in_flight, g.max_queue, g.queue_timeout)
}

pub(super) fn tools(
    at: &Scope<'_>,
    tools: &[ToolTrafficFile],
) -> Result<Vec<ToolTraffic>, ConfigError> {
    let mut out: Vec<ToolTraffic> = Vec::with_capacity(tools.len());
    for (j, t) in tools.iter().enumerate() {
        let at = at.index(j);
        let at_match = at.key("match");
        if t.pattern.is_empty() {
            return Err(at_match.err("an empty pattern matches nothing; use \"*\" for any tool"));
        }
        if out.iter().any(|o| o.pattern == t.pattern) {
            return Err(at_match.err(format!("`{}` is listed twice", t.pattern)));
        }
        let set = ToolSet::new(std::slice::from_ref(&t.pattern)).map_err(|e| at_match.err(e))?;
        let gate = match t.max_in_flight {
            Some(n) => Some(spec(
                &at,
                n,
                t.max_queue.unwrap_or(0),
                t.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT),
            )?),
            None => {
                for (k, set) in [
                    ("max_queue", t.max_queue.is_some()),
                    ("queue_timeout", t.queue_timeout.is_some()),
                ] {
                    if set {
                        return Err(at
                            .key(k)
                            .err(format!("{k} needs max_in_flight (the gate it queues for)")));
                    }
                }
                None
            }
        };
        let deadline = match (t.deadline, t.max_deadline) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(at
                    .key("max_deadline")
                    .err("max_deadline needs deadline (the one progress extends)"))
            }
            (Some(d), max) => {
                if d.is_zero() {
                    return Err(at.key("deadline").err("deadline must be more than zero"));
                }
                let max = max.unwrap_or(d);
                if max < d {
                    return Err(at
                        .key("max_deadline")
                        .err("max_deadline must be at least deadline"));
                }
                Some(Deadline { initial: d, max })
            }
        };
        if gate.is_none() && deadline.is_none() {
            return Err(at_match
                .err("this entry sets neither max_in_flight nor deadline, so it does nothing"));
        }
        out.push(ToolTraffic {
            pattern: t.pattern.clone(),
            tools: set,
            gate,
            deadline,
        });
    }
    Ok(out)
}

fn spec(
    at: &Scope<'_>,
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
) -> Result<GateSpec, ConfigError> {
    if max_in_flight == 0 || max_in_flight > MAX_COUNT {
        return Err(at
            .key("max_in_flight")
            .err(format!("max_in_flight must be between 1 and {MAX_COUNT}")));
    }
    if max_queue > MAX_COUNT {
        return Err(at
            .key("max_queue")
            .err(format!("max_queue must be at most {MAX_COUNT}")));
    }
    if queue_timeout.is_zero() {
        return Err(at
            .key("queue_timeout")
            .err("queue_timeout must be more than zero"));
    }
    Ok(GateSpec {
        max_in_flight,
        max_queue,
        queue_timeout,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::{Config, ConfigError, Deadline};

    fn load(text: &str) -> Result<Config, ConfigError> {
        crate::load_str(Path::new("gw.yaml"), text)
    }

    const GOOD: &str = r#"routes:
  - path: /mcp
    upstream: demo
    rate_limits:
      - name: per-caller
        per: principal
        rate: 20/s
      - per: principal_tool
        rate: 5/10s
        burst: 2
        tools: ["search_*"]
upstreams:
  demo:
    url: http://127.0.0.1:3001/mcp
    concurrency:
      max_in_flight: 64
    tools:
      - match: "render_*"
        max_in_flight: 2
        max_queue: 3
        queue_timeout: 30s
admission:
  max_streams: 10
"#;

    #[test]
    fn traffic_keys_validate_with_defaults_filled_in() {
        let c = load(GOOD).expect("valid");
        let limits = &c.routes[0].rate_limits;
        assert_eq!(limits.len(), 2);
        assert_eq!(
            (limits[0].name.as_str(), limits[0].burst.get()),
            ("per-caller", 20)
        );
        assert_eq!(limits[0].max_keys, 100_000);
        assert_eq!(limits[1].name, "principal_tool", "named after its scope");
        assert_eq!(limits[1].rate.interval(), Duration::from_secs(2));
        assert!(limits[1]
            .tools
            .as_ref()
            .is_some_and(|t| t.matches("search_web")));
        let up = &c.upstreams[0];
        let all = up.concurrency.expect("gate");
        assert_eq!(
            (all.max_in_flight, all.max_queue, all.queue_timeout),
            (64, 0, Duration::from_secs(10))
        );
        assert_eq!(up.tools[0].gate.map(|g| g.max_queue), Some(3));
        assert!(up.tools[0].tools.matches("render_pdf"));
        assert_eq!(up.tools[0].deadline, None);
        assert_eq!(
            (c.admission.max_requests, c.admission.max_streams),
            (4096, 10)
        );
    }

    #[test]
    fn bad_traffic_values_name_line_and_key() {
        for (from, to, line, key) in [
            (
                "rate: 20/s",
                "rate: 20/fortnight",
                7,
                "routes[0].rate_limits[0].rate",
            ),
            (
                "rate: 20/s",
                "rate: 0/s",
                7,
                "routes[0].rate_limits[0].rate",
            ),
            (
                "per: principal\n",
                "per: team\n",
                6,
                "routes[0].rate_limits[0].per",
            ),
            ("burst: 2", "burst: 0", 10, "routes[0].rate_limits[1].burst"),
            (
                "[\"search_*\"]",
                "[\"[oops\"]",
                11,
                "routes[0].rate_limits[1].tools",
            ),
            (
                "- per: principal_tool",
                "- name: per-caller\n        per: principal_tool",
                8,
                "routes[0].rate_limits[1].name",
            ),
            (
                "max_in_flight: 64",
                "max_in_flight: 0",
                16,
                "upstreams.demo.concurrency.max_in_flight",
            ),
            (
                "max_queue: 3",
                "max_queue: 2000000",
                20,
                "upstreams.demo.tools[0].max_queue",
            ),
            (
                "queue_timeout: 30s",
                "queue_timeout: 0s",
                21,
                "upstreams.demo.tools[0].queue_timeout",
            ),
            (
                "match: \"render_*\"",
                "match: \"\"",
                18,
                "upstreams.demo.tools[0].match",
            ),
            (
                "max_streams: 10",
                "max_streams: 0",
                23,
                "admission.max_streams",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let e = load(&GOOD.replacen(from, to, 1)).expect_err(to);
            assert_eq!(e.key.as_deref(), Some(key), "{to}: {e}");
            assert_eq!(e.line, Some(line), "{to}: {e}");
        }
        let e = load(&GOOD.replace("        max_in_flight: 2\n", "")).expect_err("required");
        assert!(e.message.contains("max_in_flight"), "{e}");
        let e = load(&GOOD.replace("max_queue: 3", "max_qeue: 3")).expect_err("typo");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn tool_entries_set_a_gate_a_deadline_or_both() {
        let with = |entry: &str| {
            GOOD.replace(
                "      - match: \"render_*\"\n        max_in_flight: 2\n        max_queue: 3\n        queue_timeout: 30s\n",
                entry,
            )
        };
        let c = load(&with(
            "      - match: slow\n        deadline: 30s\n        max_deadline: 5m\n",
        ))
        .expect("a deadline alone");
        let t = &c.upstreams[0].tools[0];
        assert!(t.gate.is_none());
        assert_eq!(
            t.deadline,
            Some(Deadline {
                initial: Duration::from_secs(30),
                max: Duration::from_secs(300)
            })
        );
        let c = load(&with("      - match: slow\n        deadline: 30s\n")).expect("valid");
        assert_eq!(
            c.upstreams[0].tools[0].deadline.map(|d| d.max),
            Some(Duration::from_secs(30))
        );
        for (entry, key) in [
            ("      - match: slow\n", "upstreams.demo.tools[0].match"),
            (
                "      - match: slow\n        max_queue: 3\n",
                "upstreams.demo.tools[0].max_queue",
            ),
            (
                "      - match: slow\n        deadline: 0s\n",
                "upstreams.demo.tools[0].deadline",
            ),
            (
                "      - match: slow\n        max_deadline: 5s\n",
                "upstreams.demo.tools[0].max_deadline",
            ),
            (
                "      - match: slow\n        deadline: 5s\n        max_deadline: 1s\n",
                "upstreams.demo.tools[0].max_deadline",
            ),
        ] {
            let e = load(&with(entry)).expect_err(entry);
            assert_eq!(e.key.as_deref(), Some(key), "{entry}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
    }
}
