//! `routes[].auth`: reads key files, parses algorithms, fills in defaults (audience =
//! the route's public URL), and builds the route's verifier.

use std::time::Duration;

use portcullis_auth::{
    Algorithm, ApiKeyEntry, ApiKeys, CertificateName, IssuerConfig, JwksRegistry, JwksSchedule,
    JwtVerifier, KeySource, Keys, RouteAuth,
};

use crate::error::ConfigError;
use crate::file::{ApiKeyFile, AuthFile, CertificateNameFile, IssuerFile, JwtFile};
use crate::scope::Scope;

/// Algorithms accepted when an issuer lists none (asymmetric only).
const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub(super) fn compile(
    at: &Scope<'_>,
    a: &AuthFile,
    public_url: Option<&str>,
    route_path: &str,
) -> Result<RouteAuth, ConfigError> {
    let verifier = match &a.jwt {
        Some(jwt) => Some(compile_jwt(&at.key("jwt"), jwt, public_url, route_path)?),
        None => None,
    };
    let mut entries: Vec<ApiKeyFile> = a.api_keys.clone();
    if let Some(file) = &a.api_keys_file {
        let at_file = at.key("api_keys_file");
        let text = std::fs::read_to_string(at.resolve(file))
            .map_err(|e| at_file.err(format!("cannot read {}: {e}", file.display())))?;
        let more: Vec<ApiKeyFile> = serde_yaml::from_str(&text).map_err(|e| {
            at_file.err(format!(
                "{}: not a list of api_keys entries: {e}",
                file.display()
            ))
        })?;
        entries.extend(more);
    }
    let api_keys = if entries.is_empty() {
        None
    } else {
        let list: Vec<ApiKeyEntry> = entries
            .into_iter()
            .map(|e| ApiKeyEntry {
                name: e.name,
                sha256: e.sha256,
                groups: e.groups,
                scopes: e.scopes,
            })
            .collect();
        Some(ApiKeys::new(&list).map_err(|e| at.key("api_keys").err(e))?)
    };
    let client_certificate = a.client_certificate.as_ref().map(|c| match c.subject {
        CertificateNameFile::CommonName => CertificateName::CommonName,
        CertificateNameFile::Dns => CertificateName::Dns,
        CertificateNameFile::Uri => CertificateName::Uri,
        CertificateNameFile::Email => CertificateName::Email,
    });
    if verifier.is_none() && api_keys.is_none() && client_certificate.is_none() {
        return Err(at.err(
            "configure jwt, api_keys, api_keys_file or client_certificate \
             (remove auth for an anonymous route)",
        ));
    }
    let authorization_servers = if a.authorization_servers.is_empty() {
        a.jwt
            .iter()
            .flat_map(|j| j.issuers.iter().map(|i| i.issuer.clone()))
            .collect()
    } else {
        a.authorization_servers.clone()
    };
    let scopes_supported = if a.scopes_supported.is_empty() {
        a.required_scopes.clone()
    } else {
        a.scopes_supported.clone()
    };
    Ok(RouteAuth {
        verifier,
        api_keys,
        client_certificate,
        required_scopes: a.required_scopes.clone(),
        scopes_supported,
        authorization_servers,
    })
}

fn compile_jwt(
    at: &Scope<'_>,
    jwt: &JwtFile,
    public_url: Option<&str>,
    route_path: &str,
) -> Result<JwtVerifier, ConfigError> {
    if jwt.issuers.is_empty() {
        return Err(at.key("issuers").err("list at least one issuer"));
    }
    let mut issuers = Vec::with_capacity(jwt.issuers.len());
    for (n, f) in jwt.issuers.iter().enumerate() {
        issuers.push(issuer(
            &at.key("issuers").index(n),
            f,
            public_url,
            route_path,
        )?);
    }
    Ok(JwtVerifier::new(issuers, jwt.cache_entries))
}

fn issuer(
    at: &Scope<'_>,
    f: &IssuerFile,
    public_url: Option<&str>,
    route_path: &str,
) -> Result<IssuerConfig, ConfigError> {
    if f.issuer == portcullis_auth::API_KEY_ISSUER
        || f.issuer == portcullis_auth::CERTIFICATE_ISSUER
    {
        return Err(at.key("issuer").err(format!(
            "`{}` is the issuer the gateway gives API-key or client-certificate principals; a token issuer cannot use it",
            f.issuer
        )));
    }
    let sources = [
        f.jwks_url.is_some(),
        f.jwks_file.is_some(),
        f.pem_file.is_some(),
        f.secret_file.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(at
            .key("issuer")
            .err("give exactly one of jwks_url, jwks_file, pem_file, secret_file"));
    }
    let read = |p: &std::path::Path, key: &'static str| {
        std::fs::read(at.resolve(p))
            .map_err(|e| at.key(key).err(format!("cannot read {}: {e}", p.display())))
    };
    let keys: KeySource = if let Some(url) = &f.jwks_url {
        check_jwks_url(url).map_err(|e| at.key("jwks_url").err(e))?;
        for (key, value) in [
            ("jwks_refresh_interval", f.jwks_refresh_interval),
            ("jwks_refetch_min_interval", f.jwks_refetch_min_interval),
        ] {
            // A floor on both, so no setting lets tokens flood the provider.
            if value < Duration::from_secs(1) {
                return Err(at.key(key).err("must be at least 1s"));
            }
        }
        KeySource::Remote(JwksRegistry::global().get(
            url,
            JwksSchedule {
                refresh_interval: f.jwks_refresh_interval,
                min_refetch_interval: f.jwks_refetch_min_interval,
            },
        ))
    } else if let Some(p) = &f.jwks_file {
        let bytes = read(p, "jwks_file")?;
        Keys::from_jwks_json(&String::from_utf8_lossy(&bytes))
            .map_err(|e| at.key("jwks_file").err(format!("{}: {e}", p.display())))?
            .into()
    } else if let Some(p) = &f.pem_file {
        let bytes = read(p, "pem_file")?;
        Keys::from_pem(&bytes, None)
            .map_err(|e| at.key("pem_file").err(format!("{}: {e}", p.display())))?
            .into()
    } else if let Some(p) = &f.secret_file {
        let bytes = read(p, "secret_file")?;
        let secret = bytes.trim_ascii_end();
        if secret.len() < 32 {
            return Err(at
                .key("secret_file")
                .err("an HMAC secret needs at least 32 bytes"));
        }
        Keys::from_secret(secret).into()
    } else {
        return Err(at.key("issuer").err("no key source"));
    };
    let algorithms = if f.algorithms.is_empty() {
        if f.secret_file.is_some() {
            vec![Algorithm::HS256]
        } else {
            DEFAULT_ALGORITHMS.to_vec()
        }
    } else {
        let mut out = Vec::with_capacity(f.algorithms.len());
        for name in &f.algorithms {
            let alg: Algorithm = name.parse().map_err(|_| {
                at.key("algorithms")
                    .err(format!("unknown algorithm `{name}`"))
            })?;
            out.push(alg);
        }
        out
    };
    let audiences = if f.audiences.is_empty() {
        match public_url {
            Some(base) => vec![format!("{}{route_path}", base.trim_end_matches('/'))],
            None => {
                return Err(at.key("audiences").err(
                    "set audiences, or http.public_url so the audience defaults to the route's URL (RFC 8707)",
                ))
            }
        }
    } else {
        f.audiences.clone()
    };
    Ok(IssuerConfig {
        issuer: f.issuer.clone(),
        audiences,
        algorithms,
        leeway: f.leeway,
        keys,
        groups_claims: f.groups_claims.clone(),
        keep_claims: f.keep_claims.clone(),
    })
}

/// A JWKS URL must be absolute http(s) with a host; credentials in it would end up in
/// logs and metrics, so they are refused.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{url}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are refused".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn config(auth: &str, http: &str) -> String {
        let keys = format!(
            "{}/../portcullis-auth/tests/keys",
            env!("CARGO_MANIFEST_DIR")
        );
        format!(
            "{http}routes:\n  - path: /mcp\n    upstream: u\n    auth:\n{}\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n",
            auth.replace("KEYS", &keys)
        )
    }

    fn load(text: &str) -> Result<crate::Config, crate::ConfigError> {
        crate::load_str(Path::new("gw.yaml"), text)
    }

    const GOOD: &str = "      jwt:\n        issuers:\n          - issuer: https://idp\n            pem_file: KEYS/rsa1.pub";

    #[test]
    fn a_route_with_jwt_auth_compiles_with_the_audience_from_public_url() {
        let c = load(&config(
            GOOD,
            "http:\n  public_url: https://mcp.example.com/\n",
        ))
        .expect("valid");
        let auth = c.routes[0].auth.as_ref().expect("auth");
        assert_eq!(auth.authorization_servers, ["https://idp"]);
        assert_eq!(
            c.http.public_url.as_deref(),
            Some("https://mcp.example.com")
        );
    }

    #[test]
    fn a_jwks_url_issuer_shares_one_key_set_across_reloads() {
        let text = config(
            &GOOD.replace("pem_file: KEYS/rsa1.pub", "jwks_url: https://idp.test/jwks"),
            "http:\n  public_url: https://m\n",
        );
        let remote = |c: &crate::Config| {
            let auth = c.routes[0].auth.as_ref().expect("auth");
            let v = auth.verifier.as_ref().expect("jwt");
            match &v.issuers()[0].keys {
                portcullis_auth::KeySource::Remote(r) => r.clone(),
                portcullis_auth::KeySource::Static(_) => panic!("a jwks_url is remote"),
            }
        };
        let first = load(&text).expect("valid");
        let second = load(&text).expect("valid again");
        assert!(
            std::sync::Arc::ptr_eq(&remote(&first), &remote(&second)),
            "a reload keeps the fetched keys"
        );
        assert_eq!(remote(&first).url(), "https://idp.test/jwks");
    }

    #[test]
    fn api_keys_come_inline_or_from_a_file_and_auth_needs_a_method() {
        let dir = std::env::temp_dir().join(format!("portcullis-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let hash = "7fe986afa29b694fb947cb728591bbb8ca234e9038c7b12341bad7d55c062e92";
        std::fs::write(
            dir.join("keys.yaml"),
            format!("- name: from-file\n  sha256: {hash}\n"),
        )
        .expect("write");
        let path = dir.join("gw.yaml");
        let c =
            crate::load_str(&path, &config("      api_keys_file: keys.yaml", "")).expect("valid");
        let auth = c.routes[0].auth.as_ref().expect("auth");
        assert!(auth.verifier.is_none());
        let keys = auth.api_keys.as_ref().expect("keys");
        assert_eq!(
            keys.check("ci-key-123")
                .map(|p| p.subject.clone())
                .as_deref(),
            Some("from-file")
        );

        let e = crate::load_str(&path, &config("      required_scopes: [x]", ""))
            .expect_err("no method");
        assert_eq!(e.key.as_deref(), Some("routes[0].auth"), "{e}");
        let e = crate::load_str(
            &path,
            &config(
                "      api_keys:\n        - name: a\n          sha256: nothex",
                "",
            ),
        )
        .expect_err("bad hash");
        assert_eq!(e.key.as_deref(), Some("routes[0].auth.api_keys"), "{e}");
    }

    #[test]
    fn auth_mistakes_name_line_and_key() {
        let cases = [
            (
                config(GOOD, ""),
                "routes[0].auth.jwt.issuers[0].audiences",
                "public_url",
            ),
            (
                config(
                    &GOOD.replace("pem_file: KEYS/rsa1.pub", "pem_file: KEYS/none.pub"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].pem_file",
                "cannot read",
            ),
            (
                config(
                    &format!("{GOOD}\n            jwks_file: KEYS/jwks.json"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].issuer",
                "exactly one",
            ),
            (
                config(
                    &format!("{GOOD}\n            algorithms: [RS999]"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].algorithms",
                "unknown algorithm",
            ),
            (
                config(
                    &GOOD.replace("pem_file: KEYS/rsa1.pub", "pem_file: KEYS/jwks.json"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].pem_file",
                "PEM",
            ),
            (
                config(
                    &GOOD.replace("pem_file: KEYS/rsa1.pub", "jwks_url: ftp://idp/jwks"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].jwks_url",
                "http://",
            ),
            (
                config(
                    &GOOD.replace("pem_file: KEYS/rsa1.pub", "jwks_url: https://u:p@idp/jwks"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].jwks_url",
                "credentials",
            ),
            (
                config(
                    &GOOD.replace(
                        "pem_file: KEYS/rsa1.pub",
                        "jwks_url: https://idp/jwks\n            jwks_refresh_interval: 10ms",
                    ),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].jwks_refresh_interval",
                "at least",
            ),
            (
                config(
                    &GOOD.replace(
                        "pem_file: KEYS/rsa1.pub",
                        "jwks_url: https://idp/jwks\n            jwks_refetch_min_interval: 0s",
                    ),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].jwks_refetch_min_interval",
                "at least",
            ),
            (
                config(
                    &GOOD.replace("issuer: https://idp", "issuer: api-key"),
                    "http:\n  public_url: https://m\n",
                ),
                "routes[0].auth.jwt.issuers[0].issuer",
                "API-key",
            ),
            (
                config(GOOD, "http:\n  public_url: https://m/with/path\n"),
                "http.public_url",
                "without a path",
            ),
        ];
        for (text, key, msg) in cases {
            let e = load(&text).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.message.contains(msg), "{e}");
            assert!(e.line.is_some(), "{e}");
        }
    }
}
