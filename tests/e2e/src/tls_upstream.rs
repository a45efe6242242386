//! An rmcp server behind real TLS (tokio-rustls), HTTP/1.1 or HTTP/2 by ALPN, with an
//! optional client-certificate requirement: the https upstream of the TLS tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::pki::Issued;

/// How the upstream's TLS is set up.
pub struct TlsOptions {
    /// Its certificate.
    pub cert: Issued,
    /// Require client certificates signed by this CA (PEM).
    pub client_ca: Option<String>,
    /// Offer HTTP/2 by ALPN (besides HTTP/1.1).
    pub h2: bool,
}

/// A running https MCP server (the demo tools).
pub struct TlsUpstream {
    /// `https://127.0.0.1:PORT/mcp`
    pub url: String,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Handshakes that completed, and with which ALPN protocol (`h2` counted apart).
    pub handshakes: Arc<AtomicUsize>,
    /// Handshakes that negotiated HTTP/2.
    pub h2_handshakes: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn server_config(o: &TlsOptions) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(o.cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(o.cert.key_pem.as_bytes()).expect("key pem");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match &o.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.expect("ca pem")).expect("ca");
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).expect("server config");
    cfg.alpn_protocols = if o.h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg
}

impl TlsUpstream {
    /// Serves the demo server over TLS on a loopback port.
    pub async fn demo(o: TlsOptions) -> TlsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&o)));
        let stop = CancellationToken::new();
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(Duration::from_secs(600));
        let service = StreamableHttpService::new(
            || Ok(portcullis_demo::Demo),
            Arc::new(sessions),
            StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
        );
        let (handshakes, h2_handshakes) = (Arc::default(), Arc::default());
        let (hs, h2s): (Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&handshakes), Arc::clone(&h2_handshakes));
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (acceptor, svc, token) = (acceptor.clone(), service.clone(), token.clone());
                let (hs, h2s) = (hs.clone(), h2s.clone());
                tokio::spawn(async move {
                    // A client that fails the handshake (untrusted CA, no certificate) is
                    // simply dropped, as a real server does.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    hs.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2s.fetch_add(1, Ordering::SeqCst);
                    }
                    let conn = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                        .into_owned();
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        TlsUpstream {
            url: format!("https://{addr}/mcp"),
            addr,
            handshakes,
            h2_handshakes,
            stop,
        }
    }
}
