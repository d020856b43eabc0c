//! The operator's client for a media node's admin API: `/status`, `/drain` (and back), and the
//! room assignments of `PUT`/`DELETE /admin/rooms/{room}` and `POST /admin/rooms/{room}/move`.
//!
//! A trait, so reconcilers can be tested with a recording fake and the local fabric can talk to
//! child processes the same way. Every call carries the admin bearer token, re-read from its
//! file (a mounted Secret) on each call so a rotated token is picked up without a restart.

use crate::secret::SecretSource;
use futures_util::future::BoxFuture;
use moim_wire::admin::RoomAssignment;
use moim_wire::status::NodeStatus;
use std::time::Duration;

/// Why a node admin call failed (the message reads well in a condition).
pub type NodeApiResult<T> = std::result::Result<T, String>;

/// What the operator asks of a media node.
pub trait NodeAdmin: Send + Sync + 'static {
    /// `GET /status`.
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<NodeStatus>>;
    /// `PUT /admin/rooms/{room}`.
    fn assign<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        assignment: &'a RoomAssignment,
    ) -> BoxFuture<'a, NodeApiResult<()>>;
    /// `DELETE /admin/rooms/{room}`.
    fn release<'a>(&'a self, base: &'a str, room: &'a str) -> BoxFuture<'a, NodeApiResult<()>>;
    /// `POST /drain`.
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>>;
    /// `DELETE /drain`: take the node back into service (refused once its pod is stopping).
    fn undrain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>>;
    /// `POST /admin/rooms/{room}/move`: send the room's participants to `url`.
    fn move_room<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, NodeApiResult<()>>;
}

/// The admin API over HTTP.
pub struct HttpNodeAdmin {
    http: reqwest::Client,
    token: SecretSource,
}

impl HttpNodeAdmin {
    /// A client with short timeouts: a node that does not answer in 3 s is reported as such.
    pub fn new(token: SecretSource) -> NodeApiResult<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http, token })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> NodeApiResult<reqwest::Response> {
        let req = match self.token.read()? {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| describe(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(format!(
            "{} {}",
            status.as_u16(),
            body.trim().chars().take(200).collect::<String>()
        ))
    }
}

/// reqwest's errors print only their outermost layer; the cause is what a person needs.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl NodeAdmin for HttpNodeAdmin {
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<NodeStatus>> {
        Box::pin(async move {
            let resp = self.send(self.http.get(format!("{base}/status"))).await?;
            resp.json::<NodeStatus>()
                .await
                .map_err(|e| format!("status is not a node status document: {e}"))
        })
    }

    fn assign<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        assignment: &'a RoomAssignment,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            let url = format!("{base}/admin/rooms/{}", path_segment(room));
            match self.send(self.http.put(url).json(assignment)).await {
                Ok(_) => Ok(()),
                // The node holds a newer plan: nothing to do.
                Err(e) if e.starts_with("409") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn release<'a>(&'a self, base: &'a str, room: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            let url = format!("{base}/admin/rooms/{}", path_segment(room));
            self.send(self.http.delete(url)).await.map(drop)
        })
    }

    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.send(self.http.post(format!("{base}/drain")))
                .await
                .map(drop)
        })
    }

    fn undrain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.send(self.http.delete(format!("{base}/drain")))
                .await
                .map(drop)
        })
    }

    fn move_room<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            let target = format!("{base}/admin/rooms/{}/move", path_segment(room));
            let body = moim_wire::admin::RoomMove {
                url: url.to_owned(),
            };
            self.send(self.http.post(target).json(&body))
                .await
                .map(drop)
        })
    }
}

/// Percent-encodes what may not stand in a URL path segment. Room names are
/// `namespace.name`, so this is a guard rather than a common path.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(super::path_segment("team.standup"), "team.standup");
        assert_eq!(super::path_segment("a/b c"), "a%2Fb%20c");
    }
}
