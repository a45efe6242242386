//! The TLS listener's hooks into rustls, each reading the live config so a reload
//! (a rotated certificate, a new CA bundle) reaches the next handshake while open
//! connections go on: the certificate chosen by SNI, the client-certificate check, and
//! the client's chain kept on the connection and checked again against the live CAs
//! before a request may use it.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::ALPN;
use portcullis_tls::rustls;
use portcullis_tls::PeerIdentity;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::snapshot::Live;

/// The TLS settings of the public TLS listener: certificates and client checks from the
/// live config, ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3 (rustls' modern defaults).
pub fn settings(live: &Live) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::with_callbacks(Box::new(KeepPeer))
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    settings.set_cert_resolver(Arc::new(LiveCerts(live.clone())));
    settings.set_client_cert_verifier(Arc::new(LiveClientAuth(live.clone())));
    settings.set_alpn(ALPN::H2H1);
    Ok(settings)
}

/// Chooses the served certificate by SNI from the live config.
struct LiveCerts(Live);

impl std::fmt::Debug for LiveCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCerts")
    }
}

impl ResolvesServerCert for LiveCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.0.load();
        let tls = snap.config.tls.as_ref()?;
        tls.certs.pick(hello.server_name())
    }
}

/// Checks client certificates against the live config's CAs; offers client
/// authentication only when the config asks for it.
struct LiveClientAuth(Live);

impl std::fmt::Debug for LiveClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveClientAuth")
    }
}

impl LiveClientAuth {
    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let snap = self.0.load();
        let auth = snap.config.tls.as_ref()?.client_auth.as_ref()?;
        Some(auth.verifier.clone())
    }
}

fn no_client_auth() -> rustls::Error {
    rustls::Error::General("client certificates are not configured".into())
}

impl ClientCertVerifier for LiveClientAuth {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        let snap = self.0.load();
        snap.config
            .tls
            .as_ref()
            .and_then(|t| t.client_auth.as_ref())
            .is_some_and(|a| a.required)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA names live in the swappable config; sending no hints lets the client
        // offer any certificate it has, which the check below then judges.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .ok_or_else(no_client_auth)?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .ok_or_else(no_client_auth)?
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .ok_or_else(no_client_auth)?
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        portcullis_tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// After a handshake, keeps the client's certificate chain on the connection. It is
/// verified against the live config when a request uses it ([`client_identity`]), not
/// trusted from the handshake: a resumed TLS session carries the chain of the session
/// it resumes without rustls verifying it again, and the CAs may have changed since.
struct KeepPeer;

#[async_trait]
impl TlsAccept for KeepPeer {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let chain = tls.peer_cert_chain_der()?;
        let identity = PeerIdentity::parse(chain.first()?)?;
        Some(Arc::new(ClientChain {
            chain: chain.to_vec(),
            identity,
            checked: parking_lot::Mutex::new(None),
        }))
    }
}

/// A connection's client certificate chain, and the verdict of the last check.
struct ClientChain {
    chain: Vec<CertificateDer<'static>>,
    identity: PeerIdentity,
    /// The config version it was last checked under, and the verdict.
    checked: parking_lot::Mutex<Option<(String, bool)>>,
}

/// What a TLS connection's client certificate is worth under the live config.
pub enum ClientCert<'a> {
    /// Not a TLS connection, or no client certificates configured.
    NotAsked,
    /// None was presented (or a resumed session had none).
    Absent,
    /// Presented, but it does not verify against the live CAs now (removed CA, expired).
    Rejected,
    /// Verified against the live CAs now.
    Verified(&'a PeerIdentity),
}

/// Checks the connection's client certificate against `snap`'s CAs, once per config
/// version per connection.
pub fn client_identity<'a>(
    digest: Option<&'a pingora_core::protocols::Digest>,
    snap: &crate::snapshot::Snapshot,
) -> ClientCert<'a> {
    let Some(ssl) = digest.and_then(|d| d.ssl_digest.as_ref()) else {
        return ClientCert::NotAsked;
    };
    let Some(auth) = snap
        .config
        .tls
        .as_ref()
        .and_then(|t| t.client_auth.as_ref())
    else {
        return ClientCert::NotAsked;
    };
    let Some(kept) = ssl.extension.get::<ClientChain>() else {
        return ClientCert::Absent;
    };
    let mut checked = kept.checked.lock();
    let ok = match &*checked {
        Some((version, ok)) if *version == snap.config.version => *ok,
        _ => {
            let ok = match kept.chain.split_first() {
                Some((leaf, intermediates)) => auth
                    .verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok(),
                None => false,
            };
            *checked = Some((snap.config.version.clone(), ok));
            ok
        }
    };
    if ok {
        ClientCert::Verified(&kept.identity)
    } else {
        ClientCert::Rejected
    }
}
