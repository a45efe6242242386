//! Reading PEM files: a certificate chain with its private key (checked to match and
//! to be in date), and CA bundles. Every error names the file.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cert::CertInfo;
use crate::TlsError;

/// A certificate chain and its private key, ready to serve or to present.
#[derive(Clone)]
pub struct Identity {
    /// The chain and signing key as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The chain as DER, leaf first (pingora's upstream connector takes it this way).
    pub chain_der: Vec<Vec<u8>>,
    /// The private key as DER.
    pub key_der: Vec<u8>,
    /// What the leaf certificate says.
    pub info: CertInfo,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError::new(file, format!("cannot read: {e}")))
}

fn certs(file: &Path, text: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(text) {
        out.push(item.map_err(|e| TlsError::new(file, format!("not valid PEM: {e}")))?);
    }
    if out.is_empty() {
        return Err(TlsError::new(file, "holds no PEM certificate"));
    }
    Ok(out)
}

/// Reads a certificate chain (leaf first) and its private key, and checks that the key
/// belongs to the leaf and that the leaf is in date at `now` (Unix seconds).
pub fn load_identity(cert_file: &Path, key_file: &Path, now: i64) -> Result<Identity, TlsError> {
    let chain = certs(cert_file, &read(cert_file)?)?;
    let info = CertInfo::parse(&chain[0]).map_err(|e| TlsError::new(cert_file, e))?;
    for (i, c) in chain.iter().enumerate().skip(1) {
        CertInfo::parse(c).map_err(|e| {
            TlsError::new(
                cert_file,
                format!("certificate {} of the chain: {e}", i + 1),
            )
        })?;
    }
    if info.not_after < now {
        return Err(TlsError::new(
            cert_file,
            format!("the certificate expired on {}", info.not_after_text()),
        ));
    }
    if info.not_before > now {
        return Err(TlsError::new(
            cert_file,
            format!(
                "the certificate is not valid before {}",
                info.not_before_text()
            ),
        ));
    }
    let key_text = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        TlsError::new(
            key_file,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let key_der = key.secret_der().to_vec();
    let signer = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::new(key_file, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().map_err(|_| {
        TlsError::new(
            key_file,
            format!(
                "this key does not belong to the certificate in {}",
                cert_file.display()
            ),
        )
    })?;
    Ok(Identity {
        key: Arc::new(certified),
        chain_der: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
        key_der,
        info,
    })
}

/// Reads a CA bundle: one or more PEM certificates, each a valid X.509 certificate that
/// webpki accepts as a trust anchor (so a bad one is found here, not at a handshake).
pub fn load_ca(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let all = certs(file, &read(file)?)?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in all.iter().enumerate() {
        CertInfo::parse(c).map_err(|e| TlsError::new(file, e))?;
        roots.add(c.clone()).map_err(|e| {
            TlsError::new(
                file,
                format!("certificate {} is not usable as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("portcullis-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn mint(names: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("mint");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads_and_names_its_hosts() {
        let d = dir("good");
        let (cert, key) = mint(&["gw.test", "*.gw.test"]);
        std::fs::write(d.join("c.pem"), cert).expect("w");
        std::fs::write(d.join("k.pem"), key).expect("w");
        let id = load_identity(&d.join("c.pem"), &d.join("k.pem"), crate::now_unix()).expect("ok");
        assert_eq!(id.info.dns_names, ["gw.test", "*.gw.test"]);
        assert!(id.info.not_after > crate::now_unix());
        assert_eq!(id.chain_der.len(), 1);
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let d = dir("bad");
        let (cert, key) = mint(&["a.test"]);
        let (_, other_key) = mint(&["b.test"]);
        std::fs::write(d.join("c.pem"), &cert).expect("w");
        std::fs::write(d.join("k.pem"), &key).expect("w");
        std::fs::write(d.join("other.pem"), &other_key).expect("w");
        std::fs::write(d.join("empty.pem"), "").expect("w");
        std::fs::write(
            d.join("junk.pem"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        )
        .expect("w");
        std::fs::write(d.join("trunc.pem"), &cert[..cert.len() / 2]).expect("w");
        let now = crate::now_unix();
        let cases = [
            ("missing.pem", "k.pem", "missing.pem", "cannot read"),
            ("empty.pem", "k.pem", "empty.pem", "no PEM certificate"),
            ("junk.pem", "k.pem", "junk.pem", "not valid PEM"),
            ("trunc.pem", "k.pem", "trunc.pem", "PEM"),
            ("c.pem", "c.pem", "c.pem", "private key"),
            ("c.pem", "other.pem", "other.pem", "does not belong"),
        ];
        for (c, k, file, says) in cases {
            let e = load_identity(&d.join(c), &d.join(k), now).expect_err(c);
            assert_eq!(e.file, d.join(file), "{c}/{k}: {e}");
            assert!(e.detail.contains(says), "{c}/{k}: {e}");
        }
        // Ten years on, the certificate has lapsed.
        let e = load_identity(&d.join("c.pem"), &d.join("k.pem"), now + 10 * 366 * 86_400)
            .expect_err("expired");
        assert!(e.detail.contains("expired"), "{e}");
        assert!(load_ca(&d.join("c.pem")).is_ok());
        assert!(load_ca(&d.join("k.pem")).is_err(), "a key is not a CA");
    }
}
