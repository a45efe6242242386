//! JWT verification against real keys (test-only PEM and JWKS fixtures in tests/keys):
//! what is accepted, what is refused and why, key rotation, and the verified-token cache.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis_auth::{
    AuthError, IssuerConfig, JwksRegistry, JwksSchedule, JwtVerifier, KeySource, Keys,
};
use serde_json::{json, Value};

const ISS: &str = "https://idp.example.com/realms/demo";
const AUD: &str = "https://mcp.example.com/mcp";
const NOW: u64 = 1_900_000_000;

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn issuer(keys: Keys, algorithms: Vec<Algorithm>) -> IssuerConfig {
    IssuerConfig {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms,
        leeway: Duration::from_secs(30),
        keys: keys.into(),
        groups_claims: vec!["groups".into(), "realm_access.roles".into()],
        keep_claims: vec!["tenant".into()],
    }
}

fn jwks_verifier() -> JwtVerifier {
    let jwks = String::from_utf8(key_file("jwks.json")).expect("utf-8");
    let keys = Keys::from_jwks_json(&jwks).expect("jwks");
    JwtVerifier::new(vec![issuer(keys, vec![Algorithm::RS256])], 100)
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 600, "iat": NOW});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn rs256(kid: &str, key: &str, c: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(
        &h,
        c,
        &EncodingKey::from_rsa_pem(&key_file(key)).expect("key"),
    )
    .expect("sign")
}

fn invalid(r: Result<Arc<portcullis_auth::Principal>, AuthError>) -> String {
    match r {
        Err(AuthError::Invalid(why)) => why,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_valid_token_yields_subject_groups_scopes_and_kept_claims() {
    let v = jwks_verifier();
    let t = rs256(
        "k1",
        "rsa1.key",
        &claims(json!({"scope": "tools:read tools:call", "groups": ["eng"],
            "realm_access": {"roles": ["admin"]}, "tenant": "acme"})),
    );
    let p = v.verify(&t, NOW).expect("valid");
    assert_eq!(p.subject, "alice");
    assert_eq!(p.issuer, ISS);
    assert_eq!(p.groups, ["eng", "admin"]);
    assert_eq!(p.scopes, ["tools:read", "tools:call"]);
    assert!(p.has_scopes(["tools:call"]) && !p.has_scopes(["admin:all"]));
    assert_eq!(p.claims.get("tenant").map(String::as_str), Some("\"acme\""));
    // scp as an array (Entra style) works too.
    let t = rs256("k1", "rsa1.key", &claims(json!({"scp": ["a", "b"]})));
    assert_eq!(v.verify(&t, NOW).expect("valid").scopes, ["a", "b"]);
}

#[test]
fn rotation_every_key_in_the_set_is_found_by_kid_and_unknown_kids_are_refused() {
    let v = jwks_verifier();
    assert!(v
        .verify(&rs256("k2", "rsa2.key", &claims(json!({}))), NOW)
        .is_ok());
    let why = invalid(v.verify(&rs256("k9", "rsa1.key", &claims(json!({}))), NOW));
    assert!(why.contains("unknown key id"), "{why}");
    // Signed by key 2 but claiming kid k1: the signature does not verify.
    assert!(v
        .verify(&rs256("k1", "rsa2.key", &claims(json!({}))), NOW)
        .is_err());
}

#[test]
fn time_audience_and_issuer_are_enforced() {
    let v = jwks_verifier();
    let expired = rs256("k1", "rsa1.key", &claims(json!({"exp": NOW - 120})));
    assert_eq!(v.verify(&expired, NOW), Err(AuthError::Expired));
    let within_leeway = rs256("k1", "rsa1.key", &claims(json!({"exp": NOW - 10})));
    assert!(v.verify(&within_leeway, NOW).is_ok(), "30 s leeway");
    let early = rs256("k1", "rsa1.key", &claims(json!({"nbf": NOW + 600})));
    assert!(invalid(v.verify(&early, NOW)).contains("nbf"));
    let other_aud = rs256(
        "k1",
        "rsa1.key",
        &claims(json!({"aud": "https://other.example.com"})),
    );
    assert!(invalid(v.verify(&other_aud, NOW)).contains("audience"));
    let other_iss = rs256(
        "k1",
        "rsa1.key",
        &claims(json!({"iss": "https://evil.example.com"})),
    );
    assert!(invalid(v.verify(&other_iss, NOW)).contains("not trusted"));
    let no_sub = rs256(
        "k1",
        "rsa1.key",
        &json!({"iss": ISS, "aud": AUD, "exp": NOW + 60}),
    );
    assert!(v.verify(&no_sub, NOW).is_err());
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let v = jwks_verifier();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    assert!(v.verify(&none, NOW).is_err(), "alg none");
    // HS256 keyed with the RSA public key's bytes: the classic confusion attack.
    let public_pem = key_file("rsa1.pub");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let forged = encode(
        &h,
        &claims(json!({})),
        &EncodingKey::from_secret(&public_pem),
    )
    .expect("sign");
    assert!(invalid(v.verify(&forged, NOW)).contains("not accepted"));
    // Even an issuer that also accepts HS256 cannot verify it with RSA keys.
    let jwks = String::from_utf8(key_file("jwks.json")).expect("utf-8");
    let both = JwtVerifier::new(
        vec![issuer(
            Keys::from_jwks_json(&jwks).expect("jwks"),
            vec![Algorithm::RS256, Algorithm::HS256],
        )],
        0,
    );
    assert!(both.verify(&forged, NOW).is_err());
}

#[test]
fn malformed_and_oversized_tokens_are_refused_without_panicking() {
    let v = jwks_verifier();
    assert_eq!(v.verify("", NOW), Err(AuthError::Missing));
    for t in [
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.%%%.x",
        "\u{0}.\u{1}.\u{2}",
    ] {
        assert!(v.verify(t, NOW).is_err(), "{t:?}");
    }
    let huge = format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c");
    assert!(invalid(v.verify(&huge, NOW)).contains("longer than"));
    let good = rs256("k1", "rsa1.key", &claims(json!({})));
    for cut in [1, good.len() / 2, good.len() - 1] {
        assert!(v.verify(&good[..cut], NOW).is_err(), "truncated at {cut}");
    }
}

#[test]
fn ec_and_eddsa_keys_from_pem_and_hmac_where_configured() {
    let ec = JwtVerifier::new(
        vec![issuer(
            Keys::from_pem(&key_file("ec1.pub"), None).expect("ec"),
            vec![Algorithm::ES256],
        )],
        0,
    );
    let t = encode(
        &Header::new(Algorithm::ES256),
        &claims(json!({})),
        &EncodingKey::from_ec_pem(&key_file("ec1.key")).expect("key"),
    )
    .expect("sign");
    assert_eq!(ec.verify(&t, NOW).expect("ES256").subject, "alice");

    let ed = JwtVerifier::new(
        vec![issuer(
            Keys::from_pem(&key_file("ed1.pub"), None).expect("ed"),
            vec![Algorithm::EdDSA],
        )],
        0,
    );
    let t = encode(
        &Header::new(Algorithm::EdDSA),
        &claims(json!({})),
        &EncodingKey::from_ed_pem(&key_file("ed1.key")).expect("key"),
    )
    .expect("sign");
    assert!(ed.verify(&t, NOW).is_ok(), "EdDSA");

    let hs = JwtVerifier::new(
        vec![issuer(Keys::from_secret(b"s3cret"), vec![Algorithm::HS256])],
        0,
    );
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .expect("sign");
    assert!(hs.verify(&t, NOW).is_ok(), "HS256 where configured");
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");
    assert!(hs.verify(&wrong, NOW).is_err());
}

#[test]
fn a_verified_token_is_served_from_the_cache_until_it_expires() {
    let v = jwks_verifier();
    let t = rs256("k1", "rsa1.key", &claims(json!({"exp": NOW + 60})));
    let first = v.verify(&t, NOW).expect("valid");
    let second = v.verify(&t, NOW + 1).expect("cached");
    assert!(
        Arc::ptr_eq(&first, &second),
        "the second check was a cache hit"
    );
    assert_eq!(
        v.verify(&t, NOW + 120),
        Err(AuthError::Expired),
        "expired entries are not served"
    );
}

#[test]
fn bad_key_material_is_a_clear_error() {
    assert!(Keys::from_jwks_json("{}").is_err());
    assert!(Keys::from_jwks_json(r#"{"keys":[]}"#).is_err());
    assert!(Keys::from_jwks_json("not json").is_err());
    assert!(Keys::from_pem(
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        None
    )
    .is_err());
}

/// The fixture JWKS with only the keys whose ids are listed.
fn jwks_with(kids: &[&str]) -> String {
    let all: Value = serde_json::from_slice(&key_file("jwks.json")).expect("fixture jwks is JSON");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

#[test]
fn a_fetched_key_set_rotates_and_cached_tokens_of_a_removed_key_stop_working() {
    let registry = JwksRegistry::default();
    let remote = registry.get(
        "http://idp.test/jwks",
        JwksSchedule {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(0),
        },
    );
    let mut i = issuer(Keys::from_secret(b"unused"), vec![Algorithm::RS256]);
    i.keys = KeySource::Remote(remote.clone());
    let v = JwtVerifier::new(vec![i], 100);
    let old = rs256("k1", "rsa1.key", &claims(json!({})));
    let new = rs256("k2", "rsa2.key", &claims(json!({})));

    assert!(
        invalid(v.verify(&old, NOW)).contains("unknown key id"),
        "nothing fetched yet"
    );
    let t = std::time::Instant::now();
    remote.begin_fetch(t);
    remote.finish_fetch(Ok(&jwks_with(&["k1"])), t).expect("k1");
    assert!(v.verify(&old, NOW).is_ok());
    assert!(invalid(v.verify(&new, NOW)).contains("unknown key id \"k2\""));

    remote.begin_fetch(t);
    remote
        .finish_fetch(Ok(&jwks_with(&["k1", "k2"])), t)
        .expect("both");
    assert!(
        v.verify(&old, NOW).is_ok(),
        "old tokens work while their key is listed"
    );
    assert!(v.verify(&new, NOW).is_ok(), "the new key is used");

    remote.begin_fetch(t);
    remote.finish_fetch(Ok(&jwks_with(&["k2"])), t).expect("k2");
    assert!(
        invalid(v.verify(&old, NOW)).contains("unknown key id"),
        "a cached token stops working once its key leaves the set"
    );
    assert!(v.verify(&new, NOW).is_ok());

    remote.begin_fetch(t);
    assert!(remote
        .finish_fetch(Err("connection refused".into()), t)
        .is_err());
    assert!(
        v.verify(&new, NOW).is_ok(),
        "the last good set serves while the IdP is down"
    );
}

#[test]
fn a_jwks_with_odd_keys_keeps_the_usable_ones() {
    let good: Value = serde_json::from_str(&jwks_with(&["k1"])).expect("json");
    let mut keys = good["keys"].as_array().expect("keys").clone();
    let mut enc = keys[0].clone();
    enc["kid"] = json!("enc1");
    enc["use"] = json!("enc");
    keys.extend([
        enc,
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
        json!({"kty": "OKP", "kid": "x", "crv": "X25519", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}),
        json!({"kty": "weird", "kid": "w"}),
        json!("not an object"),
    ]);
    let doc = json!({ "keys": keys }).to_string();
    let k = Keys::from_jwks_json(&doc).expect("the usable key is kept");
    assert_eq!(k.len(), 1);
    let only_odd = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    assert!(Keys::from_jwks_json(&only_odd).is_err(), "no usable key");
}
