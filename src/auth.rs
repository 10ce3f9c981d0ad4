//! JWT verification and per-channel permissions. A [`Verifier`] is built
//! once from the configured key and shared by the workers; tokens are
//! checked at connect and refresh time only, permissions at subscribe time.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Where the verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HS256 shared secret (bytes, trimmed of a trailing newline).
    Secret(Vec<u8>),
    /// RS256 or ES256 public key in PEM.
    PublicKeyPem(Vec<u8>),
    /// A JWKS document; keys are picked by `kid`.
    Jwks(Vec<u8>),
}

/// Why a token was refused: short, safe to send to the client and log (it
/// never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify, or the algorithm is not accepted.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not match.
    #[error("wrong audience")]
    Audience,
    /// `iss` does not match.
    #[error("wrong issuer")]
    Issuer,
    /// JWKS: no key with the token's `kid`.
    #[error("unknown key id")]
    UnknownKid,
}

impl AuthError {
    /// Every reason, in metric order.
    pub const ALL: [AuthError; 8] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::Audience,
        AuthError::Issuer,
        AuthError::UnknownKid,
    ];

    /// Position in [`AuthError::ALL`].
    pub fn index(&self) -> usize {
        AuthError::ALL
            .iter()
            .position(|e| e == self)
            .expect("listed")
    }

    /// The one-line reason sent to the client (401 body, 1008 reason).
    pub const fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::Audience => "wrong audience",
            AuthError::Issuer => "wrong issuer",
            AuthError::UnknownKid => "unknown key id",
        }
    }

    /// Label for `tickwire_auth_failures_total{reason=...}`.
    pub const fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::Issuer => "issuer",
            AuthError::UnknownKid => "unknown_kid",
        }
    }
}

/// The claims the engine reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Channel patterns the user may subscribe to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channel patterns the user may publish to (kept, not used yet).
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Why a key could not be loaded (a config error naming the file).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct KeyError {
    /// The file (or the environment variable).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

enum Keys {
    One(Vec<Algorithm>, DecodingKey),
    Jwks(Vec<(String, Algorithm, DecodingKey)>),
}

/// Verifies tokens; built once, shared.
pub struct Verifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_s", &self.leeway_s)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier; `origin` names the file in errors.
    ///
    /// # Errors
    /// The key does not parse.
    pub fn new(
        source: &KeySource,
        origin: &str,
        audience: Option<String>,
        issuer: Option<String>,
        leeway_s: u64,
    ) -> Result<Verifier, KeyError> {
        let err = |message: String| KeyError {
            path: origin.to_string(),
            message,
        };
        let keys = match source {
            KeySource::Secret(s) => {
                if s.is_empty() {
                    return Err(err("the secret is empty".into()));
                }
                Keys::One(
                    vec![Algorithm::HS256],
                    DecodingKey::from_secret(s).map_err(|e| err(e.to_string()))?,
                )
            }
            KeySource::PublicKeyPem(pem) => {
                if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    Keys::One(vec![Algorithm::ES256], k)
                } else {
                    let k = DecodingKey::from_rsa_pem(pem).map_err(|e| {
                        err(format!("not an RSA or EC P-256 public key in PEM: {e}"))
                    })?;
                    Keys::One(vec![Algorithm::RS256], k)
                }
            }
            KeySource::Jwks(text) => {
                let set: JwkSet = serde_json::from_slice(text)
                    .map_err(|e| err(format!("not a JWKS document: {e}")))?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let Some(kid) = jwk.common.key_id.clone() else {
                        continue;
                    };
                    let alg = match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        _ => continue,
                    };
                    let k =
                        DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid:?}: {e}")))?;
                    keys.push((kid, alg, k));
                }
                if keys.is_empty() {
                    return Err(err("no RSA or EC key with a \"kid\"".into()));
                }
                Keys::Jwks(keys)
            }
        };
        Ok(Verifier {
            keys,
            audience,
            issuer,
            leeway_s,
        })
    }

    /// Checks a token at `now` (unix seconds).
    ///
    /// # Errors
    /// Why it is refused, in one line.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (algs, key) = match &self.keys {
            Keys::One(algs, k) => (algs.clone(), k),
            Keys::Jwks(keys) => {
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKid)?;
                let (_, alg, k) = keys
                    .iter()
                    .find(|(id, _, _)| id == kid)
                    .ok_or(AuthError::UnknownKid)?;
                (vec![*alg], k)
            }
        };
        if !algs.contains(&header.alg) {
            return Err(AuthError::BadSignature);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = algs;
        // Time is checked below against the caller's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims = ["exp".to_string(), "sub".to_string()].into();
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<RawClaims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                    AuthError::BadSignature
                }
                _ => AuthError::Malformed,
            }
        })?;
        let raw = data.claims;
        if let Some(want) = &self.issuer
            && raw.iss.as_deref() != Some(want.as_str())
        {
            return Err(AuthError::Issuer);
        }
        if let Some(want) = &self.audience {
            let ok = match &raw.aud {
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(l)) => l.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::Audience);
            }
        }
        let c = raw.claims;
        if now >= c.exp.saturating_add(self.leeway_s) {
            return Err(AuthError::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| now.saturating_add(self.leeway_s) < nbf)
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(c)
    }
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
}

/// Channel patterns compiled for one user: exact names, or prefixes from a
/// trailing `*`; `{sub}` is replaced by the user's sub, literally (a `*`
/// in a sub is part of a name, never a wildcard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl Permissions {
    /// Compiles patterns for `sub`.
    pub fn compile(patterns: &[String], sub: &str) -> Permissions {
        let mut p = Permissions::default();
        for pat in patterns {
            // The wildcard is the pattern's own trailing `*`, decided before
            // substituting: a sub ending in `*` must not turn `user:{sub}`
            // into a grant of every channel starting with `user:`.
            match pat.strip_suffix('*') {
                Some(prefix) => p.prefixes.push(prefix.replace("{sub}", sub).into()),
                None => p.exact.push(pat.replace("{sub}", sub).into()),
            }
        }
        p.exact.sort_unstable();
        p.exact.dedup();
        p
    }

    /// Whether `channel` may be subscribed to.
    pub fn allows(&self, channel: &str) -> bool {
        self.exact.binary_search_by(|e| (**e).cmp(channel)).is_ok()
            || self.prefixes.iter().any(|p| channel.starts_with(&**p))
    }
}

/// An authenticated user on one connection: who, until when, and what
/// they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token's `sub`.
    pub sub: Box<str>,
    /// The token's `exp`, unix seconds.
    pub exp: u64,
    /// Channels the user may subscribe to.
    pub channels: Permissions,
    /// Channels the user may publish to (the two-way protocol).
    pub publish: Permissions,
    /// `token_expiring` was sent for this `exp`.
    pub warned: bool,
}

impl Session {
    /// The session a verified token grants.
    pub fn from_claims(c: &Claims) -> Session {
        Session {
            sub: c.sub.as_str().into(),
            exp: c.exp,
            channels: Permissions::compile(&c.channels, &c.sub),
            publish: Permissions::compile(&c.publish, &c.sub),
            warned: false,
        }
    }
}

/// Where a connection is with authentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnAuth {
    /// Authentication is not configured.
    #[default]
    Off,
    /// Upgraded without a token: only `{"op":"auth"}` is accepted, until
    /// the handshake timeout from `since_ms`.
    Waiting {
        /// When the upgrade completed (worker clock, ms).
        since_ms: u64,
    },
    /// Authenticated.
    User(Box<Session>),
}

impl ConnAuth {
    /// Whether the connection may subscribe to `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            ConnAuth::Off => true,
            ConnAuth::Waiting { .. } => false,
            ConnAuth::User(s) => s.channels.allows(channel),
        }
    }
}

/// Wall-clock unix seconds (token times are wall-clock).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a key file for [`KeySource`].
///
/// # Errors
/// The file cannot be read.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Constant-time equality for shared tokens (the ingest `AUTH` line).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const NOW: u64 = 1_800_000_000;

    fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(
            &KeySource::Secret(b"s3cret".to_vec()),
            "secret",
            Some("tw".into()),
            None,
            30,
        )
        .unwrap()
    }

    #[test]
    fn auth_tokens_verify_with_one_line_reasons() {
        let v = verifier();
        let good =
            serde_json::json!({"sub":"u1","exp":NOW+60,"aud":"tw","channels":["A","user.{sub}.*"]});
        let c = v.verify(&hs(good.clone(), b"s3cret"), NOW).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(
            v.verify(&hs(good, b"other"), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify("nope", NOW), Err(AuthError::Malformed));
        assert_eq!(v.verify("", NOW), Err(AuthError::Missing));
        let expired = serde_json::json!({"sub":"u1","exp":NOW-31,"aud":"tw"});
        assert_eq!(
            v.verify(&hs(expired, b"s3cret"), NOW),
            Err(AuthError::Expired)
        );
        let within_leeway = serde_json::json!({"sub":"u1","exp":NOW-29,"aud":"tw"});
        assert!(v.verify(&hs(within_leeway, b"s3cret"), NOW).is_ok());
        let early = serde_json::json!({"sub":"u1","exp":NOW+600,"nbf":NOW+60,"aud":"tw"});
        assert_eq!(
            v.verify(&hs(early, b"s3cret"), NOW),
            Err(AuthError::NotYetValid)
        );
        let no_exp = serde_json::json!({"sub":"u1","aud":"tw"});
        assert_eq!(
            v.verify(&hs(no_exp, b"s3cret"), NOW),
            Err(AuthError::Malformed)
        );
        let aud = serde_json::json!({"sub":"u1","exp":NOW+60,"aud":"else"});
        assert_eq!(v.verify(&hs(aud, b"s3cret"), NOW), Err(AuthError::Audience));
    }

    #[test]
    fn auth_es256_public_key() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let v = Verifier::new(
            &KeySource::PublicKeyPem(kp.public_key_pem().into_bytes()),
            "pub.pem",
            None,
            None,
            0,
        )
        .unwrap();
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let t = encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({"sub":"u","exp":NOW+5}),
            &enc,
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().sub, "u");
        // An HS256 token signed with the public key text is refused.
        let forged = hs(
            serde_json::json!({"sub":"u","exp":NOW+5}),
            kp.public_key_pem().as_bytes(),
        );
        assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
        let bad = Verifier::new(
            &KeySource::PublicKeyPem(b"junk".to_vec()),
            "k.pem",
            None,
            None,
            0,
        );
        assert!(bad.unwrap_err().to_string().starts_with("k.pem: "));
    }

    fn b64url(data: &[u8]) -> String {
        data_encoding::BASE64URL_NOPAD.encode(data)
    }

    #[test]
    fn auth_jwks_picks_the_key_its_kid_names() {
        let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let k2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let jwk = |kid: &str, k: &rcgen::KeyPair| {
            let raw = k.public_key_raw();
            assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
            serde_json::json!({"kty":"EC","crv":"P-256","kid":kid,
                "x": b64url(&raw[1..33]), "y": b64url(&raw[33..])})
        };
        let doc = serde_json::json!({"keys":[jwk("one", &k1), jwk("two", &k2)]});
        let v = Verifier::new(
            &KeySource::Jwks(doc.to_string().into_bytes()),
            "keys.json",
            None,
            None,
            0,
        )
        .unwrap();
        let sign = |kid: Option<&str>, k: &rcgen::KeyPair| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.map(str::to_string);
            let enc = EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
            encode(&h, &serde_json::json!({"sub":"u","exp":NOW+5}), &enc).unwrap()
        };
        assert!(v.verify(&sign(Some("two"), &k2), NOW).is_ok());
        assert!(v.verify(&sign(Some("one"), &k1), NOW).is_ok());
        assert_eq!(
            v.verify(&sign(Some("one"), &k2), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&sign(Some("three"), &k1), NOW),
            Err(AuthError::UnknownKid)
        );
        assert_eq!(v.verify(&sign(None, &k1), NOW), Err(AuthError::UnknownKid));
        let empty = Verifier::new(
            &KeySource::Jwks(b"{\"keys\":[]}".to_vec()),
            "k",
            None,
            None,
            0,
        );
        assert!(empty.is_err());
    }

    #[test]
    fn auth_permissions_exact_prefix_and_sub() {
        let p = Permissions::compile(
            &["A".into(), "fx.*".into(), "user.{sub}".into(), "B".into()],
            "u7",
        );
        assert!(p.allows("A") && p.allows("B") && p.allows("fx.EURUSD"));
        assert!(p.allows("user.u7") && !p.allows("user.u8") && !p.allows("C"));
        assert!(!p.allows("fx") && Permissions::compile(&["*".into()], "x").allows("any"));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }

    #[test]
    fn auth_permissions_sub_is_literal() {
        let pats = ["user:{sub}".to_string(), "room.{sub}.*".to_string()];
        let p = Permissions::compile(&pats, "ann*");
        assert!(p.allows("user:ann*"), "the sub's own channel");
        assert!(
            !p.allows("user:anna") && !p.allows("user:ann") && !p.allows("user:ann*x"),
            "a `*` from sub is no wildcard"
        );
        assert!(p.allows("room.ann*.1") && !p.allows("room.anna.1"));
        let p = Permissions::compile(&pats, "*");
        assert!(p.allows("user:*") && !p.allows("user:bob") && !p.allows("room.bob.1"));
        // The pattern's own trailing `*` still is one.
        let p = Permissions::compile(&["{sub}*".into()], "u1");
        assert!(p.allows("u1") && p.allows("u1.x") && !p.allows("u2"));
    }
}
