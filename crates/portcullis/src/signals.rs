//! Process signals for `portcullis run`: SIGTERM drains (stop accepting, let requests
//! and streams finish, exit as soon as none are left or the grace period ends), SIGINT
//! stops at once. SIGHUP (reload) is handled by the reloader service.

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use portcullis_proxy::access_log::AccessLog;
use portcullis_proxy::audit::AuditLog;
use tokio::signal::unix::{signal, SignalKind};

/// How often the drain checks whether anything is still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(25);

/// Waits for SIGTERM or SIGINT and tells pingora which shutdown to perform.
pub struct Signals {
    in_flight: prometheus::IntGauge,
    access_log: AccessLog,
    audit_log: AuditLog,
}

impl Signals {
    /// `in_flight` is the gateway's count of requests being handled; the access and
    /// audit logs are flushed before an early exit.
    pub fn new(
        in_flight: prometheus::IntGauge,
        access_log: AccessLog,
        audit_log: AuditLog,
    ) -> Signals {
        Signals {
            in_flight,
            access_log,
            audit_log,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining (no new connections; in-flight requests and streams may finish)");
                let in_flight = self.in_flight.clone();
                let access_log = self.access_log.clone();
                let audit_log = self.audit_log.clone();
                // pingora waits out the whole grace period; exit as soon as nothing is left.
                let _ = std::thread::Builder::new().name("drain".into()).spawn(move || {
                    let mut quiet = 0;
                    loop {
                        std::thread::sleep(DRAIN_POLL);
                        quiet = if in_flight.get() == 0 { quiet + 1 } else { 0 };
                        // Two quiet polls: nothing in flight, not even a request just accepted.
                        if quiet >= 2 {
                            access_log.flush();
                            audit_log.flush();
                            tracing::info!("drained; exiting");
                            std::process::exit(0);
                        }
                    }
                });
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}
