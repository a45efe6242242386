//! `make bench`: a loopback load of small `tools/call` requests against three targets
//! measured in the same run — the upstream directly, a bare pingora pass-through built
//! with Portcullis's pingora settings (the floor), and Portcullis — printed as req/s,
//! p50/p99 and ratios, because absolute figures on shared machines drift. Portcullis is
//! also measured over TLS (HTTP/1.1 and HTTP/2) and for new TLS handshakes per second,
//! and a federated route over ten members for a routed call and a cached merged list.

mod certs;
mod floor;
mod load;
mod upstream;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Portcullis benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole benchmark and print the table.
    Run {
        /// The portcullis binary to measure (a release build).
        #[arg(long, default_value = "target/release/portcullis")]
        portcullis: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds; targets are measured in turn each round, and the median is reported,
        /// so slow drift of the machine hits all three alike.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Worker threads for the floor and for Portcullis.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// pingora's work-stealing runtime (true) or one runtime per thread, for both.
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        work_stealing: bool,
        /// Another portcullis binary (e.g. a build of an earlier commit) measured with
        /// the plain config in the same rounds, for an A/B of a change.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Serve the echo upstream (used by `run` in a child process).
    Upstream {
        #[arg(long)]
        listen: String,
    },
    /// Serve the bare pingora pass-through (used by `run` in a child process).
    Floor {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
        #[arg(long)]
        threads: usize,
        #[arg(long, action = clap::ArgAction::Set)]
        work_stealing: bool,
    },
}

fn main() {
    match Cli::parse().command {
        Cmd::Upstream { listen } => upstream::serve(&listen),
        Cmd::Floor {
            listen,
            upstream,
            threads,
            work_stealing,
        } => floor::serve(&listen, &upstream, threads, work_stealing),
        Cmd::Run {
            portcullis,
            seconds,
            rounds,
            threads,
            work_stealing,
            compare,
        } => {
            let settings = Settings {
                seconds,
                rounds: rounds.max(1),
                threads,
                work_stealing,
            };
            if let Err(e) = run(&portcullis, compare.as_deref(), settings) {
                eprintln!("bench: {e}");
                std::process::exit(1);
            }
        }
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a Portcullis process in front of `up`, with `route_extra` YAML under its
/// route and `upstream_extra` under its upstream, and waits until it accepts connections.
#[allow(clippy::too_many_arguments)]
fn start_gateway(
    portcullis: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    listen: &str,
    listeners_extra: &str,
    threads: usize,
    work_stealing: bool,
    up: &str,
    route_extra: &str,
    upstream_extra: &str,
) -> Result<Proc, String> {
    spawn_gateway(
        portcullis,
        dir,
        name,
        (listen, listeners_extra),
        &format!(
            "server:\n  threads: {threads}\n  grace_period: 0s\n  work_stealing: {work_stealing}\n\
routes:\n  - path: /mcp\n    upstream: echo\n{route_extra}\
upstreams:\n  echo:\n    url: http://{up}/mcp\n{upstream_extra}"
        ),
    )
}

/// A gateway with one federated route over `members` members, every one of them the
/// echo upstream under its own name (`m0`, `m1`...).
fn start_federated(
    portcullis: &std::path::Path,
    dir: &std::path::Path,
    listen: &str,
    settings: Settings,
    up: &str,
    members: usize,
) -> Result<Proc, String> {
    let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    let upstreams: String = names
        .iter()
        .map(|n| format!("  {n}:\n    url: http://{up}/mcp\n"))
        .collect();
    spawn_gateway(
        portcullis,
        dir,
        "federated",
        (listen, ""),
        &format!(
            "server:\n  threads: {}\n  grace_period: 0s\n  work_stealing: {}\n\
routes:\n  - path: /mcp\n    name: fleet\n    members: [{}]\n    federation:\n      list_cache_ttl: 1h\n\
upstreams:\n{upstreams}",
            settings.threads,
            settings.work_stealing,
            names.join(", ")
        ),
    )
}

/// Writes `name`'s config (listeners with `listeners_extra`, logs, then `rest`) and
/// starts the gateway on it.
fn spawn_gateway(
    portcullis: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    (listen, listeners_extra): (&str, &str),
    rest: &str,
) -> Result<Proc, String> {
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join(format!("{name}.yaml"));
    let text = format!(
        "listeners:\n  public: {listen}\n  admin: {admin}\n{listeners_extra}access_log:\n  output: {}\naudit_log:\n  output: {}\n{rest}",
        dir.join(format!("{name}-access.log")).display(),
        dir.join(format!("{name}-audit.log")).display(),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let log = dir.join(format!("{name}.log"));
    let proc_ = Proc(
        Command::new(portcullis)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("portcullis ({}): {e}", portcullis.display()))?,
    );
    wait_listening(listen).map_err(|e| {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        format!("{e}; portcullis ({name}) said:\n{said}")
    })?;
    Ok(proc_)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_listening(addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{addr} never accepted a connection (20 s)"))
}

/// How the targets are run and measured.
/// Members of the benchmark's federated route.
const FLEET: usize = 10;

#[derive(Clone, Copy)]
struct Settings {
    seconds: u64,
    rounds: usize,
    threads: usize,
    work_stealing: bool,
}

fn run(
    portcullis: &std::path::Path,
    compare: Option<&std::path::Path>,
    settings: Settings,
) -> Result<(), String> {
    let Settings {
        seconds,
        rounds,
        threads,
        work_stealing,
    } = settings;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let up = format!("127.0.0.1:{}", free_port()?);
    let _upstream = Proc(
        Command::new(&me)
            .args(["upstream", "--listen", &up])
            .spawn()
            .map_err(|e| format!("upstream: {e}"))?,
    );
    wait_listening(&up)?;
    let fl = format!("127.0.0.1:{}", free_port()?);
    let _floor = Proc(
        Command::new(&me)
            .args([
                "floor",
                "--listen",
                &fl,
                "--upstream",
                &up,
                "--threads",
                &threads.to_string(),
                "--work-stealing",
                &work_stealing.to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("floor: {e}"))?,
    );
    wait_listening(&fl)?;
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gw = format!("127.0.0.1:{}", free_port()?);
    let _gateway = start_gateway(
        portcullis,
        &dir,
        "plain",
        &gw,
        "",
        threads,
        work_stealing,
        &up,
        "",
        "",
    )?;
    // The same gateway with bearer JWT auth on; the token is cached after its first check.
    let secret = b"portcullis-bench-hmac-key-32-bytes-or-more";
    std::fs::write(dir.join("hmac.key"), secret).map_err(|e| e.to_string())?;
    let jwt_auth = "    auth:\n      required_scopes: [mcp:tools]\n      jwt:\n        issuers:\n\
\x20         - issuer: bench\n            audiences: [bench]\n            secret_file: hmac.key\n";
    let gw_jwt = format!("127.0.0.1:{}", free_port()?);
    let _gateway_jwt = start_gateway(
        portcullis,
        &dir,
        "jwt",
        &gw_jwt,
        "",
        threads,
        work_stealing,
        &up,
        jwt_auth,
        "",
    )?;
    // The same gateway with rate limits and gates configured but never reached: the
    // cost of counting and of taking slots.
    let limits = "    rate_limits:\n      - {name: route, per: route, rate: 1000000/s}\n\
\x20     - {name: caller, per: principal, rate: 1000000/s}\n\
\x20     - {name: tool, per: principal_tool, rate: 1000000/s, tools: [\"*\"]}\n";
    let gates = "    concurrency: {max_in_flight: 100000}\n    tools:\n      - {match: \"ech*\", max_in_flight: 100000}\n";
    let gw_limits = format!("127.0.0.1:{}", free_port()?);
    let _gateway_limits = start_gateway(
        portcullis,
        &dir,
        "limits",
        &gw_limits,
        "",
        threads,
        work_stealing,
        &up,
        limits,
        gates,
    )?;
    // The binary to compare against, with the plain config, when asked for.
    let gw_compare = format!("127.0.0.1:{}", free_port()?);
    let _gateway_compare = match compare {
        Some(bin) => Some(start_gateway(
            bin,
            &dir,
            "compare",
            &gw_compare,
            "",
            threads,
            work_stealing,
            &up,
            "",
            "",
        )?),
        None => None,
    };
    // The same gateway with a TLS listener beside its plain one (a certificate minted
    // for this run): HTTP/1.1 and HTTP/2 over TLS, and new handshakes.
    certs::mint(&dir)?;
    let gw_tls_plain = format!("127.0.0.1:{}", free_port()?);
    let gw_tls = format!("127.0.0.1:{}", free_port()?);
    let _gateway_tls = start_gateway(
        portcullis,
        &dir,
        "tls",
        &gw_tls_plain,
        &format!(
            "  tls:\n    address: {gw_tls}\n    certificates:\n      - cert_file: {}\n        key_file: {}\n",
            dir.join("bench.crt").display(),
            dir.join("bench.key").display()
        ),
        threads,
        work_stealing,
        &up,
        "",
        "",
    )?;
    wait_listening(&gw_tls)?;
    // A federated route over ten members (all the echo upstream under ten names): a call
    // routed to one member, and the merged list served from the members' cached pages.
    let gw_fed = format!("127.0.0.1:{}", free_port()?);
    let _gateway_fed = start_federated(portcullis, &dir, &gw_fed, settings, &up, FLEET)?;
    let token = load::token(secret)?;

    let plain = load::script(&dir, "call", None)?;
    let authed = load::script(&dir, "call-jwt", Some(&token))?;
    let http = |a: &str| format!("http://{a}");
    let fed_call = load::script_call(&dir, "call-fed", "m3__echo")?;
    let list = load::script_list(&dir, "list")?;
    let mut targets = vec![
        ("direct", http(&up), &plain),
        ("pingora floor", http(&fl), &plain),
        ("portcullis", http(&gw), &plain),
        ("portcullis+jwt", http(&gw_jwt), &authed),
        ("portcullis+limits", http(&gw_limits), &plain),
        ("portcullis https", format!("https://{gw_tls}"), &plain),
        ("federated call", http(&gw_fed), &fed_call),
        ("list, one route", http(&gw), &list),
        ("list, federated", http(&gw_fed), &list),
    ];
    if compare.is_some() {
        targets.push(("compare", http(&gw_compare), &plain));
    }
    println!(
        "machine: {} CPUs, {}; median of {rounds} rounds of {seconds}s, wrk on loopback; small tools/call (echo) POSTs; \
pingora threads {threads}, work_stealing {work_stealing}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load::cpu_model()
    );
    let mut table = Vec::new();
    for conns in [50usize, 1] {
        // Warm pools and caches, then measure the targets in turn, round after round.
        for (_, base, script) in &targets {
            load::wrk(script, base, conns, 2)?;
        }
        let mut runs: Vec<Vec<load::Result>> = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, (_, base, script)) in targets.iter().enumerate() {
                runs[i].push(load::wrk(script, base, conns, seconds)?);
            }
        }
        for (i, (name, _, _)) in targets.iter().enumerate() {
            table.push((conns, *name, load::median(&runs[i])));
        }
    }
    // HTTP/2 over TLS: 50 streams in flight on 2 connections, against the plain
    // gateway's 50 connections; and new TLS handshakes (a connection per request).
    let body = load::body_file(&dir)?;
    let closing = load::script_closing(&dir, "call-close")?;
    let h2_url = format!("https://{gw_tls}/mcp");
    load::h2load(&body, &h2_url, 2, 25, 2)?;
    let (mut h2_runs, mut hs_runs, mut hs_plain_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        h2_runs.push(load::h2load(&body, &h2_url, 2, 25, seconds)?);
        hs_runs.push(load::wrk(
            &closing,
            &format!("https://{gw_tls}"),
            50,
            seconds,
        )?);
        hs_plain_runs.push(load::wrk(&closing, &http(&gw_tls_plain), 50, seconds)?);
    }
    let (h2, handshakes, plain_closing) = (
        load::median(&h2_runs),
        load::median(&hs_runs),
        load::median(&hs_plain_runs),
    );
    println!(
        "\n{:<6} {:<18} {:>10} {:>10} {:>10}",
        "conns", "target", "req/s", "p50", "p99"
    );
    for (c, name, r) in &table {
        println!(
            "{:<6} {:<18} {:>10.0} {:>8.0}us {:>8.0}us",
            c, name, r.rps, r.p50_us, r.p99_us
        );
    }
    let get = |c: usize, n: &str| {
        table
            .iter()
            .find(|(cc, nn, _)| *cc == c && *nn == n)
            .map(|(_, _, r)| *r)
            .unwrap_or_default()
    };
    let (d50, f50, p50) = (
        get(50, "direct"),
        get(50, "pingora floor"),
        get(50, "portcullis"),
    );
    let (d1, f1, p1) = (
        get(1, "direct"),
        get(1, "pingora floor"),
        get(1, "portcullis"),
    );
    println!(
        "2x25   portcullis h2 (TLS) {:>8.0}          (h2load: 2 connections, 25 streams each)",
        h2.rps
    );
    println!(
        "50     new TLS handshakes {:>9.0}/s   (a connection per request; plain HTTP the same way: {:.0}/s)",
        handshakes.rps, plain_closing.rps
    );
    let j50 = get(50, "portcullis+jwt");
    let t50 = get(50, "portcullis https");
    let t1 = get(1, "portcullis https");
    let l50 = get(50, "portcullis+limits");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!("\nratios (same run):");
    println!(
        "  50 conns  portcullis / floor  req/s  {:.2}   (target >= 0.90)",
        ratio(p50.rps, f50.rps)
    );
    println!(
        "  50 conns  portcullis / direct req/s  {:.2}",
        ratio(p50.rps, d50.rps)
    );
    println!(
        "  50 conns  floor / direct      req/s  {:.2}",
        ratio(f50.rps, d50.rps)
    );
    println!(
        "  50 conns  portcullis+jwt / portcullis req/s  {:.2}   (target >= 0.90)",
        ratio(j50.rps, p50.rps)
    );
    println!(
        "  50 conns  portcullis+limits / portcullis req/s  {:.2}   (target >= 0.95)",
        ratio(l50.rps, p50.rps)
    );
    println!(
        "  50 conns  portcullis https / portcullis req/s  {:.2}   (1 conn: {:.2})",
        ratio(t50.rps, p50.rps),
        ratio(t1.rps, p1.rps)
    );
    println!(
        "  h2 (TLS, 2 conns x 25 streams) / portcullis (50 conns) req/s  {:.2}",
        ratio(h2.rps, p50.rps)
    );
    let (fc50, l50_one, l50_fed) = (
        get(50, "federated call"),
        get(50, "list, one route"),
        get(50, "list, federated"),
    );
    println!(
        "  50 conns  federated call / portcullis req/s  {:.2}   (target >= 0.90)",
        ratio(fc50.rps, p50.rps)
    );
    println!(
        "  50 conns  tools/list over {FLEET} members (cached) / one route's tools/list req/s  {:.2}   ({:.0} vs {:.0} req/s)",
        ratio(l50_fed.rps, l50_one.rps),
        l50_fed.rps,
        l50_one.rps
    );
    let added_gw = p1.p50_us - d1.p50_us;
    let added_floor = f1.p50_us - d1.p50_us;
    println!(
        "  1 conn    added p50: portcullis {:.0}us, floor {:.0}us, ratio {:.2}   (target <= 1.20)",
        added_gw,
        added_floor,
        ratio(added_gw, added_floor)
    );
    if compare.is_some() {
        let (c50, c1) = (get(50, "compare"), get(1, "compare"));
        let added_compare = c1.p50_us - d1.p50_us;
        println!(
            "  50 conns  portcullis / compare req/s  {:.2}   (compare / floor {:.2})",
            ratio(p50.rps, c50.rps),
            ratio(c50.rps, f50.rps)
        );
        println!(
            "  1 conn    added p50: portcullis {:.0}us, compare {:.0}us (compare / floor ratio {:.2})",
            added_gw,
            added_compare,
            ratio(added_compare, added_floor)
        );
    }
    Ok(())
}
