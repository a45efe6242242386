//! TLS material for the gateway, kept apart from sockets: certificates, keys and CA
//! bundles read from PEM files and checked at config load (so a bad file is refused
//! with its name, never found at the first handshake), the listener's certificates
//! chosen by SNI, client certificates verified and turned into names a route can use
//! as its principal.
//!
//! Everything here is built once per config version; the proxy swaps whole values on
//! reload, so a rotated certificate reaches new handshakes and open connections go on.

mod cert;
mod pem;
mod server;

use std::path::{Path, PathBuf};

pub use cert::{CertInfo, PeerIdentity};
pub use pem::{load_ca, load_identity, Identity};
pub use server::{ClientAuth, ServerCerts};

/// Re-exported so users of this crate name the same rustls the listener is built on.
pub use rustls;

/// A TLS file that cannot be used, with the file's name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The file at fault (or the certificate file, for a key that does not match it).
    pub file: PathBuf,
    /// What is wrong, in words for an operator.
    pub detail: String,
}

impl TlsError {
    fn new(file: &Path, detail: impl Into<String>) -> TlsError {
        TlsError {
            file: file.to_owned(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.detail)
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider every config here is built with (ring, as pingora's rustls
/// backend uses), named explicitly so no process-wide default is needed.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
