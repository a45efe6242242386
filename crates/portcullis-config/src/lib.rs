//! Portcullis configuration: the YAML schema ([`file`]), the validated model the
//! gateway serves from ([`model`]), validation section by section with errors that
//! name file, line and key, and the triggers (file change, SIGHUP) that ask for a
//! reload. Nothing here touches the network or pingora.

mod error;
mod file;
mod locate;
mod model;
mod policy;
mod scope;
mod size;
mod validate;
pub mod watch;

pub use error::ConfigError;
pub use file::{
    AccessLogFile, AdmissionFile, AuditLogFile, AuthFile, BreakerFile, CertificateFile,
    CertificateNameFile, ClientCertificateAuthFile, ClientCertificatesFile, ConfigFile,
    DiscoveryFile, FederationFile, GateFile, HealthCheckFile, Http2File, HttpFile,
    IdentityHeadersFile, IssuerFile, JwtFile, ListenersFile, MemberFile, MountedFile,
    RateLimitFile, RedisFile, RouteFile, ServerFile, SessionFailoverFile, SessionsFile,
    TlsListenerFile, ToolTrafficFile, UpstreamFile, UpstreamTlsFile,
};
pub use model::{
    canonical_ip, Admission, Config, Deadline, Discovery, Federation, HealthCheck, Http, Http2,
    IdentityHeaders, Member, OriginRule, Redis, Route, SessionKey, TlsListener, ToolTraffic,
    Upstream, UpstreamTls, MIN_SESSION_KEY_LEN,
};
pub use policy::{load_policy, policy_from_str};
pub use size::ByteSize;

use std::path::Path;

/// Reads, parses and validates a config file. Every error names the file, and where
/// it can, the line and the key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    load_str(path, &text)
}

/// Parses and validates config text that came from `path` (used in error messages).
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = file::parse(path, text)?;
    validate::validate(path, text, file)
}
