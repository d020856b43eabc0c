//! The operator's HTTP surface: the join API (`POST /v1/join`), the rejoin API
//! (`POST /v1/rejoin`), `/metrics`, `/healthz` and `/readyz`.
//!
//! A join request carries an API key (`Authorization: Bearer <key>`, keys from a mounted
//! Secret, one per line). The handler reads the watch caches, asks [`crate::join::choose`] for
//! a node, and signs a short-lived join token for it with the secret the nodes verify with.
//! `/readyz` is true only on the replica that leads and has synced its caches, so a Service
//! sends joins to the one replica whose view is current.

use crate::context::Clock;
use crate::crd::{MediaNode, Meeting};
use crate::join::{JoinError, JoinRequest, JoinResponse, JoinRole, choose, validate};
use crate::metrics::Metrics;
use crate::secret::SecretSource;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// Largest join request body.
pub const MAX_JOIN_BODY: usize = 8 * 1024;

/// Most unreachable URLs a rejoin request may name.
pub const MAX_AVOID: usize = 8;

/// `POST /v1/rejoin` body (optional): a participant whose node stopped answering asks where
/// to go now, with the token it joined with (or the node's fresher resume token) as its bearer.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejoinRequest {
    /// The region the participant was in (the region of the node it lost).
    #[serde(default)]
    pub region: Option<String>,
    /// Signalling URLs the participant tried and could not reach; chosen only when nothing
    /// else has room.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// What the HTTP handlers share.
pub struct ApiState {
    /// Meeting cache.
    pub meetings: Store<Meeting>,
    /// MediaNode cache.
    pub nodes: Store<MediaNode>,
    /// Metrics.
    pub metrics: Metrics,
    /// Join API keys.
    pub api_keys: SecretSource,
    /// Secret join tokens are signed with (the one the nodes verify with).
    pub token_secret: SecretSource,
    /// Now.
    pub clock: Clock,
    /// Lifetime of a join token, seconds.
    pub token_ttl_secs: u64,
    /// True while this replica serves joins.
    pub ready: watch::Receiver<bool>,
    /// TURN servers to hand out with each join, if any.
    pub turn: Option<crate::turn::TurnConfig>,
    /// Round-trip times between regions (nearest region for a participant whose has no node).
    pub distances: crate::core::regions::Distances,
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/join", post(join))
        .route("/v1/rejoin", post(rejoin).options(rejoin_preflight))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_JOIN_BODY))
        .with_state(state)
}

/// Serves the router on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

impl IntoResponse for JoinError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if *s.ready.borrow() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not leading or caches not synced\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let meetings = s.meetings.state();
    let nodes = s.nodes.state();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(
            meetings.iter().map(|m| m.as_ref()),
            nodes.iter().map(|n| n.as_ref()),
        ),
    )
        .into_response()
}

fn authorized(s: &ApiState, headers: &HeaderMap) -> Result<(), JoinError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(JoinError::Unauthorized)?;
    let keys = s.api_keys.lines().map_err(|e| {
        tracing::error!(error = %e, "join API keys unreadable");
        JoinError::Unavailable
    })?;
    // Compare against every key in constant time, so timing tells nothing about any key.
    let mut ok = false;
    for k in &keys {
        ok |= bool::from(k.as_bytes().ct_eq(given.as_bytes()));
    }
    if ok {
        Ok(())
    } else {
        Err(JoinError::Unauthorized)
    }
}

async fn join(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = handle_join(&s, &headers, &body);
    match result {
        Ok(r) => {
            s.metrics.join("ok");
            axum::Json(r).into_response()
        }
        Err(e) => {
            s.metrics.join(e.code());
            e.into_response()
        }
    }
}

fn handle_join(s: &ApiState, headers: &HeaderMap, body: &[u8]) -> Result<JoinResponse, JoinError> {
    authorized(s, headers)?;
    if !*s.ready.borrow() {
        return Err(JoinError::Unavailable);
    }
    let req: JoinRequest = serde_json::from_slice(body)
        .map_err(|e| JoinError::BadRequest(format!("join request: {e}")))?;
    validate(&req)?;
    answer(s, &req, &[], None)
}

/// The browser calls the rejoin API from a media node's page: any origin may, because the
/// bearer is a join token (no cookie rides along), so this grants nothing a token does not.
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        header::HeaderValue::from_static("600"),
    );
    r
}

async fn rejoin_preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

async fn rejoin(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    cors(match handle_rejoin(&s, &headers, &body) {
        Ok(r) => {
            s.metrics.join("rejoin_ok");
            axum::Json(r).into_response()
        }
        Err(e) => {
            s.metrics.join(e.code());
            e.into_response()
        }
    })
}

/// A rejoin: the token says who and which meeting (and what they may do); the answer is a
/// node of the meeting that serves now, and a fresh token for it.
fn handle_rejoin(
    s: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<JoinResponse, JoinError> {
    if !*s.ready.borrow() {
        return Err(JoinError::Unavailable);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(JoinError::Unauthorized)?;
    let secret = s
        .token_secret
        .read()
        .ok()
        .flatten()
        .ok_or(JoinError::Unavailable)?;
    let now = (s.clock)();
    let now_unix = u64::try_from(now.as_second()).unwrap_or(0);
    let claims = moim_wire::JoinClaims::verify(bearer, secret.as_bytes(), now_unix)
        .map_err(|_| JoinError::Unauthorized)?;
    let rejoin: RejoinRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RejoinRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| JoinError::BadRequest(format!("rejoin request: {e}")))?
    };
    if rejoin.unreachable.len() > MAX_AVOID {
        return Err(JoinError::BadRequest(format!(
            "at most {MAX_AVOID} unreachable URLs"
        )));
    }
    let (ns, name) = claims
        .room
        .split_once('.')
        .ok_or_else(|| JoinError::UnknownMeeting(claims.room.clone()))?;
    let req = JoinRequest {
        namespace: Some(ns.to_owned()),
        meeting: name.to_owned(),
        identity: claims.identity.clone(),
        name: claims.name.clone(),
        role: if claims.can_publish {
            JoinRole::Host
        } else {
            JoinRole::Viewer
        },
        region: rejoin.region,
    };
    validate(&req)?;
    answer(s, &req, &rejoin.unreachable, Some(claims.can_publish))
}

/// Chooses a node for `req` and signs its token; `can_publish` overrides what the role grants
/// (a rejoin keeps what the first join granted).
fn answer(
    s: &ApiState,
    req: &JoinRequest,
    avoid: &[String],
    can_publish: Option<bool>,
) -> Result<JoinResponse, JoinError> {
    let ns = req
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let meeting = s
        .meetings
        .get(&ObjectRef::new(&req.meeting).within(&ns))
        .ok_or_else(|| JoinError::UnknownMeeting(format!("{ns}/{}", req.meeting)))?;
    let nodes = s.nodes.state();
    let now = (s.clock)();
    let mut choice = choose(
        &meeting,
        &nodes,
        req,
        now,
        s.token_ttl_secs,
        &s.distances,
        avoid,
    )?;
    if let Some(p) = can_publish {
        choice.claims.can_publish = p;
    }
    let secret = s
        .token_secret
        .read()
        .ok()
        .flatten()
        .ok_or(JoinError::Unavailable)?;
    let token = choice.claims.sign(secret.as_bytes());
    let ice_servers = match &s.turn {
        Some(turn) => {
            let now_unix = u64::try_from(now.as_second()).unwrap_or(0);
            turn.ice_servers(&choice.region, &choice.claims.identity, now_unix)
                .map_err(|e| {
                    tracing::error!(error = %e, "TURN credentials unavailable");
                    JoinError::Unavailable
                })?
        }
        None => Vec::new(),
    };
    Ok(JoinResponse {
        url: choice.url,
        room: choice.claims.room.clone(),
        token,
        node: choice.node,
        region: choice.region,
        expires_at: choice.claims.exp,
        can_publish: choice.claims.can_publish,
        ice_servers,
    })
}
