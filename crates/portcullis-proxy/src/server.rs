//! Assembles a pingora `Server` from a config file: the public MCP listener, the admin
//! listener, the reloader and the upstream prober, sockets bound up front so their
//! addresses are known before the server runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::protocols::TcpKeepalive;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::listening::Service as Listening;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::audit::AuditLog;
use crate::conn::Admission;
use crate::discovery::{Discoverer, Resolve, SystemResolver};
use crate::driver::Gateway;
use crate::health::{Health, Prober};
use crate::jwks::JwksFetcher;
use crate::listen::{Prebound, PreboundService};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::snapshot::{Live, Shared, Snapshot};

/// Upstream keep-alive connections kept per worker thread.
const POOL_PER_THREAD: usize = 128;

/// A gateway built and bound, ready to run.
pub struct Prepared {
    server: Server,
    /// The plain public listener's bound address, if there is one.
    pub public: Option<SocketAddr>,
    /// The TLS public listener's bound address, if there is one.
    pub tls: Option<SocketAddr>,
    /// The admin listener's bound address.
    pub admin: SocketAddr,
    /// Requests being handled right now (for draining): `portcullis_requests_in_flight`.
    pub in_flight: prometheus::IntGauge,
    /// The configured drain time.
    pub grace_period: Duration,
    /// The live config version.
    pub version: String,
    /// The access log, to flush before the process exits.
    pub access_log: AccessLog,
    /// The audit log, likewise.
    pub audit_log: AuditLog,
}

/// What a gateway is built with besides its config file.
#[derive(Clone)]
pub struct Options {
    /// How `upstreams.<name>.discovery` names are resolved. Default: the system's
    /// resolver; tests give one they control.
    pub resolver: Arc<dyn Resolve>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// Loads `config_path`, binds both listeners and builds every service.
pub fn prepare(config_path: &Path) -> Result<Prepared, String> {
    prepare_with(config_path, Options::default())
}

/// [`prepare`] with `options`.
pub fn prepare_with(config_path: &Path, options: Options) -> Result<Prepared, String> {
    let config = portcullis_config::load(config_path).map_err(|e| e.to_string())?;
    let bind = |addr: SocketAddr, key: &str| {
        Prebound::bind(addr).map_err(|e| format!("cannot listen on {addr} ({key}): {e}"))
    };
    let public_sock = config
        .public_addr
        .map(|a| bind(a, "listeners.public"))
        .transpose()?;
    let tls_sock = config
        .tls
        .as_ref()
        .map(|t| bind(t.addr, "listeners.tls.address"))
        .transpose()?;
    let admin_sock = bind(config.admin_addr, "listeners.admin")?;
    let (public, tls, admin) = (
        public_sock.as_ref().map(|s| s.addr),
        tls_sock.as_ref().map(|s| s.addr),
        admin_sock.addr,
    );

    let metrics = Arc::new(Metrics::new());
    metrics.set_config_version(&config.version);
    metrics.set_certificates(&config);
    let access = AccessLog::start(
        config.access_log.enabled,
        &config.access_log.output,
        metrics.access_log_dropped.clone(),
    )
    .map_err(|e| {
        format!(
            "cannot open access_log.output {:?}: {e}",
            config.access_log.output
        )
    })?;
    let audit = AuditLog::new(
        AccessLog::start_named(
            "audit-log",
            config.audit_log.enabled,
            &config.audit_log.output,
            metrics.audit_log_dropped.clone(),
        )
        .map_err(|e| {
            format!(
                "cannot open audit_log.output {:?}: {e}",
                config.audit_log.output
            )
        })?,
        config.audit_log.include_arguments,
    );
    let threads = config.threads;
    let work_stealing = config.work_stealing;
    let grace_period = config.grace_period;
    let version = config.version.clone();
    let source = config.source.clone();
    if config.session_key.is_none() {
        tracing::info!(
            "sessions.key_file is not set: session ids are sealed with this process's random key, \
             so replicas behind one Service cannot serve each other's sessions (docs/configuration.md)"
        );
    }
    let shared = Shared {
        connector: Arc::new(connector(POOL_PER_THREAD * threads)?),
        metrics: metrics.clone(),
    };
    let tcp_keepalive = config.http.tcp_keepalive;
    let live = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        config, None, &shared,
    )?));
    let in_flight = metrics.in_flight.clone();

    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: POOL_PER_THREAD,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let gateway = Gateway::new(live.clone(), metrics.clone(), access.clone(), audit.clone());
    let admission = Admission {
        inner: Arc::new(gateway),
        live: live.clone(),
        metrics: metrics.clone(),
    };
    // One service for both public listeners: the same app, so the same connection cap.
    let mut public_svc = Listening::new("portcullis".to_owned(), admission);
    if let Some(sock) = &public_sock {
        public_svc.add_tcp_with_settings(&sock.key(), socket_options(tcp_keepalive));
    }
    if let Some(sock) = &tls_sock {
        public_svc.add_tls_with_settings(
            &sock.key(),
            Some(socket_options(tcp_keepalive)),
            crate::tls::settings(&live)?,
        );
    }
    public_svc.threads = Some(threads);
    server.add_service(PreboundService::new(
        public_svc,
        public_sock.into_iter().chain(tls_sock).collect(),
    ));

    let health = Arc::new(Health::default());
    let admin_app = HttpServer::new_app(Admin {
        live: live.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    });
    let mut admin_svc = Listening::new("admin".to_owned(), admin_app);
    admin_svc.add_tcp(&admin_sock.key());
    admin_svc.threads = Some(1);
    server.add_service(PreboundService::new(admin_svc, vec![admin_sock]));

    server.add_service(background_service(
        "reload",
        Reloader {
            path: source,
            live: live.clone(),
            shared,
            refused: Default::default(),
        },
    ));
    server.add_service(background_service(
        "jwks",
        JwksFetcher::new(metrics.clone())?,
    ));
    server.add_service(background_service("prune", Pruner { live: live.clone() }));
    server.add_service(background_service(
        "discovery",
        Discoverer {
            live: live.clone(),
            resolver: options.resolver,
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "probe",
        Prober {
            live,
            health,
            metrics,
            // Building it cannot fail here: the connector above read the same CA roots.
            transport: TransportConnector::new(None),
        },
    ));

    Ok(Prepared {
        server,
        public,
        tls,
        admin,
        in_flight,
        grace_period,
        version,
        access_log: access,
        audit_log: audit,
    })
}

/// The public listener's accepted sockets: TCP keep-alive probes after
/// `http.tcp_keepalive` of silence find peers that vanished without a FIN or RST.
fn socket_options(idle: Duration) -> TcpSocketOptions {
    let mut opts = TcpSocketOptions::default();
    if !idle.is_zero() {
        opts.tcp_keepalive = Some(TcpKeepalive {
            idle,
            interval: Duration::from_secs(10),
            count: 6,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::ZERO,
        });
    }
    opts
}

/// The upstream connector every snapshot shares (its pools outlive reloads). Building
/// it reads the system's CA certificates for https upstreams; pingora panics when they
/// cannot be read, which is turned into an error that says so.
fn connector(pool_size: usize) -> Result<Connector, String> {
    std::panic::catch_unwind(|| Connector::new(Some(ConnectorOptions::new(pool_size)))).map_err(
        |_| {
            "cannot load the system's CA certificates (for https upstreams); install \
             ca-certificates or set SSL_CERT_FILE to a PEM bundle"
                .to_owned()
        },
    )
}

/// How often idle rate-limit keys are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The background service that drops idle rate-limit keys of the live config every
/// [`PRUNE_EVERY`], so the sweep never runs on a request.
struct Pruner {
    live: Live,
}

#[async_trait]
impl BackgroundService for Pruner {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => self.live.load().traffic.prune(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Prepared {
    /// Runs until the signal watch says stop; blocks the calling (non-async) thread.
    pub fn run(self, signal: Box<dyn ShutdownSignalWatch>) {
        self.server.run(RunArgs {
            shutdown_signal: signal,
        });
    }
}

/// A gateway running on its own thread, stopped on demand (tests and the demo).
pub struct Running {
    /// The plain public listener's address, if there is one.
    pub public: Option<SocketAddr>,
    /// The TLS public listener's address, if there is one.
    pub tls: Option<SocketAddr>,
    /// The admin listener's address.
    pub admin: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<Option<ShutdownKind>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a [`Running`] gateway is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Stop accepting, let in-flight work run for the grace period.
    Graceful,
    /// Stop now.
    Fast,
}

struct ChannelSignal(tokio::sync::watch::Receiver<Option<ShutdownKind>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let kind = rx.wait_for(Option::is_some).await.ok().and_then(|k| *k);
        match kind {
            Some(ShutdownKind::Graceful) => ShutdownSignal::GracefulTerminate,
            _ => ShutdownSignal::FastShutdown,
        }
    }
}

/// Prepares and runs a gateway on a background thread.
pub fn spawn(config_path: &Path) -> Result<Running, String> {
    spawn_with(config_path, Options::default())
}

/// [`spawn`] with `options`.
pub fn spawn_with(config_path: &Path, options: Options) -> Result<Running, String> {
    let prepared = prepare_with(config_path, options)?;
    let (public, tls, admin) = (prepared.public, prepared.tls, prepared.admin);
    let (tx, rx) = tokio::sync::watch::channel(None);
    let thread = std::thread::Builder::new()
        .name("portcullis".into())
        .spawn(move || prepared.run(Box::new(ChannelSignal(rx))))
        .map_err(|e| format!("cannot start the gateway thread: {e}"))?;
    Ok(Running {
        public,
        tls,
        admin,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl Running {
    /// Asks the gateway to stop and waits for it to exit.
    pub fn stop(mut self, kind: ShutdownKind) {
        self.shutdown(kind);
    }

    fn shutdown(&mut self, kind: ShutdownKind) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(Some(kind));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown(ShutdownKind::Fast);
    }
}
