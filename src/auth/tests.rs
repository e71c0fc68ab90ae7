//! `Authenticator` decisions without HTTP. Tokens here are minted with `jsonwebtoken` itself; the
//! Python tests mint them with PyJWT (an independent implementation) against the real server.

use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{encode, EncodingKey, Header};

use super::*;

const SECRET: &str = "an HS256 secret of at least thirty-two bytes";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn config(dir: &std::path::Path) -> AuthConfig {
    std::fs::write(dir.join("hs.secret"), SECRET).unwrap();
    let text = format!(
        r#"
[[api_keys]]
name = "ci"
sha256 = "{}"
scopes = ["infer:digits"]
[[api_keys]]
name = "ops"
sha256 = "{}"
scopes = ["admin", "infer"]
rate_limit = {{ per_second = 5, burst = 5 }}
[jwt]
algorithms = ["HS256"]
hs256_secret_file = "{}"
issuer = "https://issuer.example"
audience = "ferrite"
leeway_secs = 0
[[clients]]
name = "batch-worker"
scopes = ["jobs"]
"#,
        sha256_hex("key-ci"),
        sha256_hex("key-ops"),
        dir.join("hs.secret").display()
    );
    toml::from_str(&text).unwrap()
}

fn bearer(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {v}")).unwrap(),
    );
    h
}

fn token(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(exp_in: i64) -> serde_json::Value {
    serde_json::json!({
        "sub": "alice", "iss": "https://issuer.example", "aud": "ferrite",
        "exp": now() as i64 + exp_in, "scope": "infer admin unknown-scope"
    })
}

#[test]
fn api_key_in_either_header_gives_its_principal_and_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    let p = a.verify(&bearer("key-ci"), None, now()).unwrap();
    assert_eq!(p.name, "ci");
    assert!(p.allows(Need::Infer(Some("digits"))));
    assert!(!p.allows(Need::Infer(Some("minilm"))));
    assert!(p.allows(Need::Infer(None)), "the handler checks the model");
    assert!(!p.allows(Need::Admin));
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static("key-ops"));
    let p = a.verify(&h, None, now()).unwrap();
    assert_eq!(p.name, "ops");
    assert!(p.allows(Need::Admin) && p.allows(Need::Infer(Some("minilm"))));
    assert_eq!(p.rate.burst, 5);
}

#[test]
fn missing_wrong_or_malformed_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    assert_eq!(
        a.verify(&HeaderMap::new(), None, now()),
        Err(AuthError::Missing)
    );
    assert_eq!(
        a.verify(&bearer("key-cI"), None, now()),
        Err(AuthError::Invalid)
    );
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("Basic a2V5LWNp"));
    assert_eq!(a.verify(&h, None, now()), Err(AuthError::Invalid));
}

#[test]
fn jwt_claims_are_checked_and_scopes_read() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    let p = a
        .verify(&bearer(&token(claims(60), SECRET)), None, now())
        .unwrap();
    assert_eq!(p.name, "jwt:alice");
    assert_eq!(p.scopes, vec![Scope::Infer, Scope::Admin]);
    let expired = token(claims(-10), SECRET);
    assert_eq!(
        a.verify(&bearer(&expired), None, now()),
        Err(AuthError::Expired)
    );
    let mut wrong_aud = claims(60);
    wrong_aud["aud"] = "other".into();
    let mut wrong_iss = claims(60);
    wrong_iss["iss"] = "https://evil.example".into();
    let mut future = claims(60);
    future["nbf"] = (now() + 30).into();
    let mut no_exp = claims(60);
    no_exp.as_object_mut().unwrap().remove("exp");
    for (what, t) in [
        ("aud", token(wrong_aud, SECRET)),
        ("iss", token(wrong_iss, SECRET)),
        ("nbf", token(future, SECRET)),
        ("no exp", token(no_exp, SECRET)),
        (
            "other secret",
            token(claims(60), "another secret of thirty-two bytes!!"),
        ),
    ] {
        assert_eq!(
            a.verify(&bearer(&t), None, now()),
            Err(AuthError::Invalid),
            "{what}"
        );
    }
}

#[test]
fn jwt_alg_none_and_unconfigured_algorithms_are_refused() {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(claims(60))
    );
    assert_eq!(
        a.verify(&bearer(&none), None, now()),
        Err(AuthError::Invalid)
    );
    let hs384 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS384),
        &claims(60),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        a.verify(&bearer(&hs384), None, now()),
        Err(AuthError::Invalid)
    );
    // A tampered payload with the original signature.
    let good = token(claims(60), SECRET);
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims(60);
    evil["sub"] = "mallory".into();
    let evil = b64(evil);
    parts[1] = &evil;
    assert_eq!(
        a.verify(&bearer(&parts.join(".")), None, now()),
        Err(AuthError::Invalid)
    );
}

#[test]
fn client_certificate_name_is_a_principal_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    let p = a
        .verify(&HeaderMap::new(), Some("batch-worker"), now())
        .unwrap();
    assert!(p.allows(Need::Jobs) && !p.allows(Need::Infer(None)));
    assert_eq!(
        a.verify(&HeaderMap::new(), Some("stranger"), now()),
        Err(AuthError::Invalid)
    );
    // Credentials in headers win over the certificate.
    assert_eq!(
        a.verify(&bearer("key-ci"), Some("batch-worker"), now())
            .unwrap()
            .name,
        "ci"
    );
}

#[test]
fn config_validation_names_the_problem() {
    let bad: AuthConfig = toml::from_str(
        "[[api_keys]]\nname = \"x\"\nsha256 = \"plaintext-key\"\nscopes = [\"infer\"]\n",
    )
    .unwrap();
    assert!(bad.validate().unwrap_err().contains("64 hex digits"));
    let e = toml::from_str::<AuthConfig>(
        "[[api_keys]]\nname = \"x\"\nsha256 = \"00\"\nscopes = [\"root\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown scope 'root'"), "{e}");
    let e = toml::from_str::<AuthConfig>("[jwt]\nalgorithms = [\"RS256\"]\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.contains("public_key_file or jwks_file"), "{e}");
}

#[test]
fn keygen_key_hashes_to_what_verify_accepts() {
    let key = generate_key();
    assert!(key.starts_with("fk_") && key.len() > 40);
    assert_ne!(key, generate_key());
    let cfg: AuthConfig = toml::from_str(&format!(
        "[[api_keys]]\nname = \"k\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n",
        sha256_hex(&key)
    ))
    .unwrap();
    let a = Authenticator::new(&cfg).unwrap();
    assert_eq!(a.verify(&bearer(&key), None, now()).unwrap().name, "k");
}

#[test]
fn feedback_needs_the_feedback_or_admin_scope_not_infer() {
    let with = |scopes: Vec<Scope>| Principal {
        name: "p".into(),
        scopes,
        rate: RateLimit::NONE,
    };
    assert!(with(vec![Scope::Feedback]).allows(Need::Feedback));
    assert!(with(vec![Scope::Admin]).allows(Need::Feedback));
    assert!(!with(vec![Scope::Infer]).allows(Need::Feedback));
    assert!(!with(vec![Scope::Feedback]).allows(Need::Admin));
}

#[test]
fn a_connections_memo_answers_only_the_same_bytes_to_the_same_verifiers_before_exp() {
    let dir = tempfile::tempdir().unwrap();
    let a = Authenticator::new(&config(dir.path())).unwrap();
    let mut memo = CredentialMemo::default();
    let t = now();
    // An API key: verified, then answered from the memo (the connection's own copy of it).
    let first = a
        .verify_remembered(&bearer("key-ci"), None, t, &mut memo)
        .unwrap();
    let again = a
        .verify_remembered(&bearer("key-ci"), None, t, &mut memo)
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the second came from the memo");
    assert_eq!(*first, *a.verify(&bearer("key-ci"), None, t).unwrap());
    // Other bytes are verified afresh, and a wrong key is refused whatever the memo holds,
    // including one of the same length that differs in its last byte only.
    assert_eq!(
        a.verify_remembered(&bearer("key-cj"), None, t, &mut memo),
        Err(AuthError::Invalid)
    );
    assert_eq!(
        a.verify_remembered(&bearer("key-c"), None, t, &mut memo),
        Err(AuthError::Invalid)
    );
    let ops = a
        .verify_remembered(&bearer("key-ops"), None, t, &mut memo)
        .unwrap();
    assert_eq!(ops.name, "ops", "the memo now holds the other key");
    // No credential: the memo is not consulted (the client certificate's name decides).
    assert_eq!(
        a.verify_remembered(&HeaderMap::new(), None, t, &mut memo),
        Err(AuthError::Missing)
    );
    assert_eq!(
        a.verify_remembered(&HeaderMap::new(), Some("batch-worker"), t, &mut memo)
            .unwrap()
            .name,
        "batch-worker"
    );
    // New verifiers (a reload) without the key: the memo does not keep it alive.
    let mut cfg = config(dir.path());
    cfg.api_keys.retain(|k| k.name != "ops");
    let reloaded = Authenticator::new(&cfg).unwrap();
    assert_eq!(
        reloaded.verify_remembered(&bearer("key-ops"), None, t, &mut memo),
        Err(AuthError::Invalid)
    );
    // A token: remembered until its exp, then verified afresh (`now` is the caches' clock;
    // `jsonwebtoken` checks `exp` against the real one, so here it still passes).
    let jwt = token(claims(60), SECRET);
    let p = a
        .verify_remembered(&bearer(&jwt), None, t, &mut memo)
        .unwrap();
    assert_eq!(p.name, "jwt:alice");
    let q = a
        .verify_remembered(&bearer(&jwt), None, t + 59, &mut memo)
        .unwrap();
    assert!(Arc::ptr_eq(&p, &q), "within exp: from the memo");
    let r = a
        .verify_remembered(&bearer(&jwt), None, t + 61, &mut memo)
        .unwrap();
    assert!(!Arc::ptr_eq(&p, &r), "past exp: not from the memo");
    // A tampered copy of a remembered token (same length) is refused.
    let mut tampered = jwt.clone().into_bytes();
    // Inside the signature (its last character may carry only padding bits).
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    a.verify_remembered(&bearer(&jwt), None, t, &mut memo)
        .unwrap();
    assert_eq!(
        a.verify_remembered(&bearer(&tampered), None, t, &mut memo),
        Err(AuthError::Invalid)
    );
}

#[test]
fn same_bytes_is_equality() {
    for len in [0usize, 1, 7, 8, 9, 43, 190] {
        let a: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        assert!(same_bytes(&a, &a.clone()), "len {len}");
        for i in 0..len {
            let mut b = a.clone();
            b[i] ^= 0x40;
            assert!(!same_bytes(&a, &b), "len {len}, byte {i}");
        }
        assert!(!same_bytes(&a, &a[..len.saturating_sub(1)]) || len == 0);
    }
}
