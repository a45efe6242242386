//! What a certificate says that the gateway uses: its validity dates and names (for
//! choosing a certificate by SNI, for expiry metrics and `portcullis check`), and the
//! identity a verified client certificate carries (for principals).

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The parts of a certificate the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// DNS subject alternative names, as written (wildcards included).
    pub dns_names: Vec<String>,
    /// Not valid before (Unix seconds).
    pub not_before: i64,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
        let (_, x) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(n) = name {
                    dns_names.push((*n).to_owned());
                }
            }
        }
        Ok(CertInfo {
            common_name: common_name(&x),
            dns_names,
            not_before: x.validity().not_before.timestamp(),
            not_after: x.validity().not_after.timestamp(),
        })
    }

    /// The names it serves: its DNS names, or its common name when it has none.
    pub fn names(&self) -> Vec<String> {
        if self.dns_names.is_empty() {
            self.common_name.iter().cloned().collect()
        } else {
            self.dns_names.clone()
        }
    }

    /// `not_after` as an RFC 3339 date.
    pub fn not_after_text(&self) -> String {
        rfc3339(self.not_after)
    }

    /// `not_before` as an RFC 3339 date.
    pub fn not_before_text(&self) -> String {
        rfc3339(self.not_before)
    }
}

fn common_name(x: &X509Certificate<'_>) -> Option<String> {
    x.subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .next()
        .map(str::to_owned)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Who a verified client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE ids among them).
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
}

impl PeerIdentity {
    /// Reads the leaf of a verified chain; `None` when it does not parse (rustls has
    /// verified it, so that does not happen for a certificate that passed).
    pub fn parse(der: &[u8]) -> Option<PeerIdentity> {
        let (_, x) = X509Certificate::from_der(der).ok()?;
        let mut id = PeerIdentity {
            common_name: common_name(&x),
            ..PeerIdentity::default()
        };
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => id.dns_names.push((*n).to_owned()),
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => id.emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn a_client_certificate_names_its_subject_and_sans() {
        let mut params =
            rcgen::CertificateParams::new(vec!["bot.internal".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ci-bot");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://corp/ci-bot").expect("uri"),
        ));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let id = PeerIdentity::parse(cert.der()).expect("parses");
        assert_eq!(id.common_name.as_deref(), Some("ci-bot"));
        assert_eq!(id.dns_names, ["bot.internal"]);
        assert_eq!(id.uris, ["spiffe://corp/ci-bot"]);
        assert_eq!(PeerIdentity::parse(b"junk"), None);
    }
}
