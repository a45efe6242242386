//! `listeners.tls` and `upstreams.<name>.tls`: certificate, key and CA files read and
//! checked at load (in date, key matching, names covered), so a bad file is refused
//! with its key and the previous config keeps serving, never found at a handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_tls::{ClientAuth, Identity, ServerCerts, TlsError};

use crate::error::ConfigError;
use crate::file::{TlsListenerFile, UpstreamTlsFile};
use crate::model::{TlsListener, UpstreamTls};
use crate::scope::Scope;

/// The error of a TLS file, at the key that names it.
fn file_err(at_cert: &Scope<'_>, at_key: &Scope<'_>, key_file: &Path, e: TlsError) -> ConfigError {
    if e.file == key_file {
        at_key.err(e.to_string())
    } else {
        at_cert.err(e.to_string())
    }
}

/// Reads a certificate chain and key written under `at` as `cert_key` / `key_key`.
fn identity(
    at: &Scope<'_>,
    (cert_key, key_key): (&'static str, &'static str),
    (cert_file, key_file): (&Path, &Path),
    files: &mut Vec<PathBuf>,
) -> Result<Identity, ConfigError> {
    let (cert_file, key_file) = (at.resolve(cert_file), at.resolve(key_file));
    files.push(cert_file.clone());
    files.push(key_file.clone());
    portcullis_tls::load_identity(&cert_file, &key_file, portcullis_tls::now_unix())
        .map_err(|e| file_err(&at.key(cert_key), &at.key(key_key), &key_file, e))
}

/// `listeners.tls`.
pub(super) fn listener(
    at: &Scope<'_>,
    f: &TlsListenerFile,
    addr: std::net::SocketAddr,
) -> Result<TlsListener, ConfigError> {
    if f.certificates.is_empty() {
        return Err(at
            .key("certificates")
            .err("a TLS listener needs at least one certificate"));
    }
    let mut files = Vec::new();
    let mut served = Vec::with_capacity(f.certificates.len());
    for (i, c) in f.certificates.iter().enumerate() {
        let at_c = at.key("certificates").index(i);
        let id = identity(
            &at_c,
            ("cert_file", "key_file"),
            (&c.cert_file, &c.key_file),
            &mut files,
        )?;
        if id.info.dns_names.is_empty() && c.server_names.is_empty() {
            tracing::warn!(
                key = %at_c.key("cert_file").dotted(),
                "the certificate has no DNS names (subjectAltName); TLS clients ignore the common \
                 name, so they can verify it only when connecting by an IP address it lists"
            );
        }
        let covered = id.info.names();
        for (j, name) in c.server_names.iter().enumerate() {
            let at_n = at_c.key("server_names").index(j);
            if portcullis_tls::rustls::pki_types::ServerName::try_from(
                name.trim_start_matches("*."),
            )
            .is_err()
            {
                return Err(at_n.err(format!("`{name}` is not a DNS name")));
            }
            if !covers(&covered, name) {
                return Err(at_n.err(format!(
                    "the certificate in {} does not cover `{name}` (it names {})",
                    c.cert_file.display(),
                    covered.join(", ")
                )));
            }
        }
        served.push((id, c.server_names.clone()));
    }
    let client_auth = match &f.client_certificates {
        Some(cc) => {
            let at_ca = at.key("client_certificates").key("ca_file");
            let ca_file = at_ca.resolve(&cc.ca_file);
            files.push(ca_file.clone());
            let cas = portcullis_tls::load_ca(&ca_file).map_err(|e| at_ca.err(e.to_string()))?;
            Some(
                ClientAuth::new(&ca_file, cas, cc.required)
                    .map_err(|e| at_ca.err(e.to_string()))?,
            )
        }
        None => None,
    };
    Ok(TlsListener {
        addr,
        certs: Arc::new(ServerCerts::new(served)),
        client_auth,
        files,
    })
}

/// Whether a certificate naming `names` is valid for `host` (wildcards as TLS clients
/// match them: one label).
fn covers(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names.iter().any(|n| {
        let n = n.to_ascii_lowercase();
        n == host
            || n.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(l, rest)| !l.is_empty() && l != "*" && rest == suffix)
            })
    })
}

/// `upstreams.<name>.tls` of an `https://` upstream whose URL names `host`.
pub(super) fn upstream(
    at: &Scope<'_>,
    f: &UpstreamTlsFile,
    host: &str,
    at_url: &Scope<'_>,
) -> Result<UpstreamTls, ConfigError> {
    let mut files = Vec::new();
    let (server_name, at_name) = match &f.server_name {
        Some(n) => (n.clone(), at.key("server_name")),
        None => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            at_url.clone(),
        ),
    };
    // pingora rewrites an underscore in the first label before verifying, so a name
    // with one would be checked against another name: refused rather than surprising.
    if server_name.contains('_')
        || portcullis_tls::rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err()
    {
        return Err(at_name.err(format!(
            "`{server_name}` is not a DNS name (letters, digits, hyphens) or IP address to verify the upstream's certificate against"
        )));
    }
    let ca = match &f.ca_file {
        Some(p) => {
            let at_ca = at.key("ca_file");
            let path = at_ca.resolve(p);
            files.push(path.clone());
            let cas = portcullis_tls::load_ca(&path).map_err(|e| at_ca.err(e.to_string()))?;
            Some(cas.iter().map(|c| c.as_ref().to_vec()).collect())
        }
        None => None,
    };
    let client = match (&f.client_cert_file, &f.client_key_file) {
        (Some(c), Some(k)) => Some(identity(
            at,
            ("client_cert_file", "client_key_file"),
            (c, k),
            &mut files,
        )?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(at
                .key("client_key_file")
                .err("client_cert_file needs client_key_file"))
        }
        (None, Some(_)) => {
            return Err(at
                .key("client_cert_file")
                .err("client_key_file needs client_cert_file"))
        }
    };
    if f.insecure_skip_verify {
        tracing::warn!(
            key = %at.dotted(),
            "insecure_skip_verify: this upstream's certificate is NOT verified; anyone on the path can \
             read and change its traffic, the upstream credential included"
        );
    }
    Ok(UpstreamTls {
        server_name,
        ca,
        client,
        verify: !f.insecure_skip_verify,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcards_cover_one_label() {
        let names = ["*.gw.test".to_owned(), "gw.test".to_owned()];
        assert!(covers(&names, "a.gw.test"));
        assert!(covers(&names, "GW.test"));
        assert!(!covers(&names, "a.b.gw.test"));
        assert!(!covers(&names, "other.test"));
        assert!(covers(&names, "*.gw.test"), "a wildcard names itself");
    }
}
