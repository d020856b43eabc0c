//! Join tokens: compact JWTs signed with HMAC-SHA256 (RFC 7519, `alg: HS256`).
//!
//! A token says who may join which room and what they may do there. It is minted by a party that
//! holds the node's secret and checked by the media node on every WHIP, WHEP and WebSocket join.
//! Only HS256 is accepted; `alg: none` and every other algorithm are refused, the signature is
//! compared in constant time, and the clock is passed in so that tests can drive time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The secret `--dev` nodes sign and check join tokens with. Public, so never for production.
pub const DEV_SECRET: &str = "moim-dev-secret-not-for-production";

/// Longest token accepted, in bytes; anything longer is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// What a join token grants.
///
/// ```
/// use moim_wire::{JoinClaims, TokenError};
///
/// let claims = JoinClaims {
///     identity: "ana-42".into(),
///     room: "standup".into(),
///     name: "Ana".into(),
///     can_publish: true,
///     can_subscribe: true,
///     can_chat: None,
///     exp: 1_000_000 + 3600,
///     nbf: None,
/// };
/// let token = claims.sign(b"node secret");
/// assert_eq!(JoinClaims::verify(&token, b"node secret", 1_000_000), Ok(claims));
/// assert_eq!(JoinClaims::verify(&token, b"other secret", 1_000_000), Err(TokenError::Signature));
/// assert_eq!(JoinClaims::verify(&token, b"node secret", 2_000_000), Err(TokenError::Expired));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The participant's stable identity (JWT `sub`).
    #[serde(rename = "sub")]
    pub identity: String,
    /// The room (meeting) the token admits to.
    pub room: String,
    /// Name shown to other participants.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// May send audio, video and screen share.
    #[serde(default = "yes")]
    pub can_publish: bool,
    /// May receive what others send.
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    /// May send chat. Absent, it follows `can_publish`: a view-only token (a webinar's
    /// audience, a public viewer link) does not chat unless it says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_chat: Option<bool>,
    /// Expiry, seconds since the Unix epoch (JWT `exp`).
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch (JWT `nbf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

pub(crate) fn yes() -> bool {
    true
}

impl JoinClaims {
    /// Whether the token allows chat (`can_chat`, or `can_publish` when it is absent).
    pub fn may_chat(&self) -> bool {
        self.can_chat.unwrap_or(self.can_publish)
    }
}

/// Why a token was refused. Messages are safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token too long")]
    TooLong,
    /// Not three base64url parts, or the parts are not the JSON a JWT holds.
    #[error("token malformed: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than HS256.
    #[error("token algorithm not accepted (only HS256)")]
    Algorithm,
    /// The signature does not match the secret.
    #[error("token signature invalid")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("token not yet valid")]
    NotYetValid,
    /// The claims are structurally fine but say nothing usable.
    #[error("token claims invalid: {0}")]
    Claims(&'static str),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::unwrap_used)]
    Hmac::<Sha256>::new_from_slice(secret).unwrap()
}

impl JoinClaims {
    /// Signs the claims with `secret`, giving a compact JWT.
    pub fn sign(&self, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        // Serializing a struct of strings, bools and integers cannot fail.
        #[allow(clippy::unwrap_used)]
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap());
        let signing_input = format!("{header}.{body}");
        let mut m = mac(secret);
        m.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Checks `token` against `secret` at `now_unix` (seconds) and returns its claims.
    pub fn verify(token: &str, secret: &[u8], now_unix: u64) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|_| TokenError::Malformed("header is not a JWT header"))?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut m = mac(secret);
        m.update(h.as_bytes());
        m.update(b".");
        m.update(b.as_bytes());
        let expected = m.finalize().into_bytes();
        if !bool::from(expected.as_slice().ct_eq(&sig)) {
            return Err(TokenError::Signature);
        }
        let body = URL_SAFE_NO_PAD
            .decode(b)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: JoinClaims = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Malformed("claims are not join claims"))?;
        if claims.exp.saturating_add(LEEWAY_SECS) <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.room.is_empty() || claims.room.len() > 128 {
            return Err(TokenError::Claims("room must be 1 to 128 bytes"));
        }
        if claims.identity.is_empty() || claims.identity.len() > 128 {
            return Err(TokenError::Claims("identity must be 1 to 128 bytes"));
        }
        if claims.name.len() > 128 {
            return Err(TokenError::Claims("name must be at most 128 bytes"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims() -> JoinClaims {
        JoinClaims {
            identity: "ana".into(),
            room: "standup".into(),
            name: "Ana".into(),
            can_publish: true,
            can_subscribe: true,
            can_chat: None,
            exp: 2_000,
            nbf: None,
        }
    }

    #[test]
    fn round_trip() {
        let t = claims().sign(SECRET);
        assert_eq!(JoinClaims::verify(&t, SECRET, 1_000), Ok(claims()));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let t = claims().sign(SECRET);
        assert_eq!(
            JoinClaims::verify(&t, SECRET, 2_000 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        let mut c = claims();
        c.nbf = Some(1_500);
        let t = c.sign(SECRET);
        assert_eq!(
            JoinClaims::verify(&t, SECRET, 1_000),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn forged_signature_and_alg_none_refused() {
        let t = claims().sign(b"other-secret");
        assert_eq!(
            JoinClaims::verify(&t, SECRET, 1_000),
            Err(TokenError::Signature)
        );
        let body = t.split('.').nth(1).unwrap_or_default();
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        assert_eq!(
            JoinClaims::verify(&none, SECRET, 1_000),
            Err(TokenError::Algorithm)
        );
    }

    #[test]
    fn tampered_claims_refused() {
        let t = claims().sign(SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.room = "ceo-office".into();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default());
        parts[1] = &forged;
        assert_eq!(
            JoinClaims::verify(&parts.join("."), SECRET, 1_000),
            Err(TokenError::Signature)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,600}") {
            let _ = JoinClaims::verify(&s, SECRET, 1_000);
        }

        #[test]
        fn arbitrary_dotted_input_never_panics(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,60}") {
            let _ = JoinClaims::verify(&format!("{a}.{b}.{c}"), SECRET, 1_000);
        }
    }
}
