//! A self-signed certificate for the TLS targets, minted per run (wrk and h2load do not
//! verify certificates; the handshake work is the same as with a CA-signed one).

use std::path::Path;

/// Writes `bench.crt` and `bench.key` (ECDSA P-256, for 127.0.0.1) into `dir`.
pub fn mint(dir: &Path) -> Result<(), String> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .map_err(|e| format!("cannot mint the bench certificate: {e}"))?;
    std::fs::write(dir.join("bench.crt"), cert.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("bench.key"), cert.signing_key.serialize_pem())
        .map_err(|e| e.to_string())?;
    Ok(())
}
