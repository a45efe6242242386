//! The listener's side: the served certificates and how one is chosen for a
//! handshake's SNI, and the client-certificate check of a listener with mTLS.

use std::path::Path;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::cert::CertInfo;
use crate::pem::Identity;
use crate::TlsError;

/// One served certificate and the names it answers for.
struct Served {
    /// Lower-case; `*.example.com` matches exactly one more label.
    names: Vec<String>,
    identity: Identity,
}

/// The certificates a TLS listener serves. A handshake gets the certificate whose name
/// matches its SNI exactly, else one whose wildcard matches, else the first one (also
/// for clients that send no SNI, such as those connecting by IP address).
pub struct ServerCerts {
    served: Vec<Served>,
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.served.iter().map(|s| &s.names))
            .finish()
    }
}

impl ServerCerts {
    /// Certificates in order of preference, each with the names it serves (empty: the
    /// names in the certificate). The first is the default. At least one is given.
    pub fn new(certs: Vec<(Identity, Vec<String>)>) -> ServerCerts {
        ServerCerts {
            served: certs
                .into_iter()
                .map(|(identity, names)| {
                    let names = if names.is_empty() {
                        identity.info.names()
                    } else {
                        names
                    };
                    Served {
                        names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                        identity,
                    }
                })
                .collect(),
        }
    }

    /// The certificate for a handshake that sent `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let chosen = sni.and_then(|host| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            self.served
                .iter()
                .find(|s| s.names.contains(&host))
                .or_else(|| {
                    self.served
                        .iter()
                        .find(|s| s.names.iter().any(|n| wildcard_matches(n, &host)))
                })
        });
        chosen
            .or_else(|| self.served.first())
            .map(|s| s.identity.key.clone())
    }

    /// Each served certificate: the first name it serves and what it says.
    pub fn served(&self) -> impl Iterator<Item = (&str, &CertInfo)> {
        self.served
            .iter()
            .map(|s| (s.names.first().map_or("", String::as_str), &s.identity.info))
    }
}

/// `*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`.
fn wildcard_matches(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    host.split_once('.')
        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
}

/// Client certificates on a listener (mTLS): the CAs that sign them, and whether a
/// client without one is refused at the handshake.
#[derive(Clone)]
pub struct ClientAuth {
    /// The rustls verifier: chains to the CAs, in date, for client authentication.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// No certificate, no connection. Otherwise a certificate is verified when sent and
    /// routes decide whether they need one.
    pub required: bool,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// A check against the CAs read from `ca_file`.
    pub fn new(
        ca_file: &Path,
        cas: Vec<CertificateDer<'static>>,
        required: bool,
    ) -> Result<ClientAuth, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| TlsError::new(ca_file, format!("not a usable CA certificate: {e}")))?;
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider());
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder
            .build()
            .map_err(|e| TlsError::new(ca_file, format!("cannot verify clients with it: {e}")))?;
        Ok(ClientAuth { verifier, required })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(names: &[&str]) -> Identity {
        let d = std::env::temp_dir().join(format!(
            "portcullis-tls-sni-{}-{}",
            std::process::id(),
            names.join("_").replace('*', "w")
        ));
        std::fs::create_dir_all(&d).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params")
        .self_signed(&key)
        .expect("cert");
        std::fs::write(d.join("c.pem"), cert.pem()).expect("w");
        std::fs::write(d.join("k.pem"), key.serialize_pem()).expect("w");
        crate::load_identity(&d.join("c.pem"), &d.join("k.pem"), crate::now_unix()).expect("loads")
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let (a, w, b) = (
            identity(&["a.test"]),
            identity(&["*.w.test"]),
            identity(&["b.test"]),
        );
        let (ka, kw, kb) = (a.key.clone(), w.key.clone(), b.key.clone());
        let certs = ServerCerts::new(vec![
            (a, vec![]),
            (w, vec![]),
            (b, vec!["B.test".into(), "x.w.test".into()]),
        ]);
        let pick = |sni| certs.pick(sni).expect("some");
        assert!(Arc::ptr_eq(&pick(Some("a.test")), &ka));
        assert!(
            Arc::ptr_eq(&pick(Some("A.TEST.")), &ka),
            "case and root dot"
        );
        assert!(Arc::ptr_eq(&pick(Some("y.w.test")), &kw));
        assert!(
            Arc::ptr_eq(&pick(Some("x.w.test")), &kb),
            "exact beats wildcard"
        );
        assert!(Arc::ptr_eq(&pick(Some("b.test")), &kb), "configured names");
        assert!(
            Arc::ptr_eq(&pick(Some("w.test")), &ka),
            "no match: the first"
        );
        assert!(
            Arc::ptr_eq(&pick(Some("a.b.w.test")), &ka),
            "one label only"
        );
        assert!(Arc::ptr_eq(&pick(None), &ka), "no SNI: the first");
        let names: Vec<&str> = certs.served().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.test", "*.w.test", "b.test"]);
    }
}
