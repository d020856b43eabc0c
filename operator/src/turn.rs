//! TURN for participants behind firewalls that pass no UDP to the media nodes: the join API
//! hands out short-lived TURN credentials in the TURN REST scheme (draft-uberti-behave-turn-rest,
//! what coturn's `use-auth-secret` checks): the username is `<expiry>:<identity>` and the
//! password is base64(HMAC-SHA1(shared secret, username)). The TURN servers share the secret
//! with the operator and nothing else, so credentials need no database and expire by
//! themselves.

use crate::secret::SecretSource;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use std::collections::BTreeMap;

/// One ICE server, as `RTCPeerConnection`'s `iceServers` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// `<expiry>:<identity>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
}

/// TURN servers per region and the secret they share.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Shared secret (coturn's `static-auth-secret`).
    pub secret: SecretSource,
    /// TURN URLs per region; `*` for participants of any other region.
    pub urls: BTreeMap<String, Vec<String>>,
    /// Lifetime of a credential, seconds.
    pub ttl_secs: u64,
}

/// Reads `--turn-url` values: `REGION=URL` (a TURN server in that region) or a bare `URL`
/// (for every region without its own).
pub fn parse_urls(values: &[String]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in values {
        let v = v.trim();
        let (region, url) = if ["turn:", "turns:", "stun:"]
            .iter()
            .any(|p| v.starts_with(p))
        {
            ("*", v)
        } else {
            v.split_once('=').ok_or_else(|| {
                format!("--turn-url {v:?}: expected REGION=turn:HOST:PORT or turn:HOST:PORT")
            })?
        };
        if !["turn:", "turns:", "stun:"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(format!(
                "--turn-url {v:?}: the URL must start with turn:, turns: or stun:"
            ));
        }
        out.entry(region.to_owned())
            .or_default()
            .push(url.to_owned());
    }
    Ok(out)
}

/// The TURN REST credential for `identity`, valid until `expires_at` (Unix seconds).
pub fn credential(secret: &[u8], identity: &str, expires_at: u64) -> (String, String) {
    // coturn reads the expiry up to the first ':'; the rest is for logs. Keep it printable.
    let who: String = identity
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let username = format!("{expires_at}:{who}");
    // HMAC takes a key of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl TurnConfig {
    /// The ICE servers for a participant of `identity` joining a node in `region` at
    /// `now_unix`: that region's TURN servers, else the `*` ones; none when neither is set.
    pub fn ice_servers(
        &self,
        region: &str,
        identity: &str,
        now_unix: u64,
    ) -> Result<Vec<IceServer>, String> {
        let Some(urls) = self.urls.get(region).or_else(|| self.urls.get("*")) else {
            return Ok(Vec::new());
        };
        let secret = self
            .secret
            .read()?
            .ok_or_else(|| "no TURN secret".to_owned())?;
        let (username, credential) =
            credential(secret.as_bytes(), identity, now_unix + self.ttl_secs);
        Ok(vec![IceServer {
            urls: urls.clone(),
            username,
            credential,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // Expected value from Python's hmac module, an independent implementation:
        // base64(hmac.new(b"north", b"1433895918:ninefingers", sha1).digest()). A real coturn
        // accepting these credentials is tested end to end (tests/tests/fabric.rs).
        let (user, pass) = credential(b"north", "ninefingers", 1_433_895_918);
        assert_eq!(user, "1433895918:ninefingers");
        assert_eq!(pass, "jy8hTxmOO7UtEKXqSkSlvakPVYA=");
        // Control characters and ':' tricks cannot change the expiry coturn reads.
        let (user, _) = credential(b"s", "a\nb:c", 10);
        assert_eq!(user, "10:ab:c");
    }

    #[test]
    fn urls_per_region_with_a_default() {
        let urls = parse_urls(&[
            "seoul=turn:turn-seoul.example.com:3478?transport=udp".into(),
            "turn:turn.example.com:3478".into(),
        ])
        .expect("urls");
        let cfg = TurnConfig {
            secret: SecretSource::Value("s".into()),
            urls,
            ttl_secs: 600,
        };
        let seoul = cfg.ice_servers("seoul", "ana", 1_000).expect("servers");
        assert_eq!(
            seoul[0].urls,
            ["turn:turn-seoul.example.com:3478?transport=udp"]
        );
        assert!(seoul[0].username.starts_with("1600:"));
        let other = cfg.ice_servers("virginia", "bo", 1_000).expect("servers");
        assert_eq!(other[0].urls, ["turn:turn.example.com:3478"]);
        assert!(parse_urls(&["seoul=http://x".into()]).is_err());
        assert!(parse_urls(&["nonsense".into()]).is_err());
    }
}
