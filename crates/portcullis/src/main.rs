//! The `portcullis` command: `run` a gateway from a config file, `check` a config file,
//! or start the `demo` (a built-in MCP server behind the gateway).

mod demo;
mod policy_cmd;
mod signals;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// glibc malloc was a sixth of a pingora proxy's profile; mimalloc cuts most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An edge gateway for fleets of MCP servers.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    /// Operational log format (the access log is always JSON).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file; reloads it on change and on SIGHUP, drains on SIGTERM.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and everything it refers to, then exit.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Mint a token the demo gateway accepts (demo and tests only: the key is public).
    Token {
        /// The `sub` claim.
        #[arg(long, default_value = "demo-user")]
        subject: String,
        /// A scope (repeatable). Default: mcp:tools, which the demo route requires.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is valid, e.g. 1h, 30m.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
    },
    /// Explain and test policies (docs/policies.md).
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCommand,
    },
    /// Start a built-in demo MCP server behind the gateway and print how to connect.
    Demo {
        /// Public MCP listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener (health, readiness, metrics).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn,pingora_core=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // SIGHUP's default action is to terminate. Until the reloader has installed its
    // handler (a few milliseconds after start), a reload request must not kill the
    // process; the reloader's handler replaces this disposition.
    // SAFETY: setting a signal's disposition to "ignore" before any threads exist.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Run { config } => run(&config, None),
        Command::Check { config } => check(&config),
        Command::Demo { listen, admin } => demo::run(&listen, &admin),
        Command::Policy { cmd } => policy_cmd::run(cmd),
        Command::Token {
            subject,
            scopes,
            groups,
            ttl,
        } => {
            let scopes = if scopes.is_empty() {
                vec![token::DEMO_SCOPE.to_owned()]
            } else {
                scopes
            };
            match token::mint(&subject, &scopes, &groups, ttl.into()) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Serves `config` until SIGTERM (drain) or SIGINT (stop now). `banner` is printed once
/// the listeners are bound.
pub(crate) fn run(
    config: &std::path::Path,
    banner: Option<&dyn Fn(&portcullis_proxy::Prepared)>,
) -> ExitCode {
    let prepared = match portcullis_proxy::prepare(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = |a: Option<std::net::SocketAddr>| a.map_or_else(String::new, |a| a.to_string());
    tracing::info!(
        public = %addr(prepared.public),
        tls = %addr(prepared.tls),
        admin = %prepared.admin,
        version = %prepared.version,
        config = %config.display(),
        "portcullis listening"
    );
    if let Some(banner) = banner {
        banner(&prepared);
    }
    let watch = signals::Signals::new(
        prepared.in_flight.clone(),
        prepared.access_log.clone(),
        prepared.audit_log.clone(),
    );
    prepared.run(Box::new(watch));
    ExitCode::SUCCESS
}

fn check(config: &std::path::Path) -> ExitCode {
    match portcullis_config::load(config) {
        Ok(c) => {
            println!(
                "ok: {} (version {}): {} route(s), {} upstream(s)",
                config.display(),
                c.version,
                c.routes.len(),
                c.upstreams.len()
            );
            for line in certificate_lines(&c) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// One line per certificate the config presents, with its expiry and the days left.
fn certificate_lines(c: &portcullis_config::Config) -> Vec<String> {
    let now = portcullis_tls::now_unix();
    let line = |what: String, info: &portcullis_tls::CertInfo| {
        format!(
            "certificate {what}: expires {} ({} days left)",
            info.not_after_text(),
            (info.not_after - now).div_euclid(86_400)
        )
    };
    let mut out = Vec::new();
    if let Some(tls) = &c.tls {
        for (name, info) in tls.certs.served() {
            out.push(line(format!("listeners.tls {name}"), info));
        }
    }
    for u in &c.upstreams {
        if let Some(id) = u.tls.as_ref().and_then(|t| t.client.as_ref()) {
            out.push(line(format!("upstreams.{} client", u.name), &id.info));
        }
    }
    out
}
