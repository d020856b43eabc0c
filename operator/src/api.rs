//! The operator's HTTP surface: the join API (`POST /v1/join`), `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! A join request carries an API key (`Authorization: Bearer <key>`, keys from a mounted
//! Secret, one per line). The handler reads the watch caches, asks [`crate::join::choose`] for
//! a node, and signs a short-lived join token for it with the secret the nodes verify with.
//! `/readyz` is true only on the replica that leads and has synced its caches, so a Service
//! sends joins to the one replica whose view is current.

use crate::context::Clock;
use crate::crd::{MediaNode, Meeting};
use crate::join::{JoinError, JoinRequest, JoinResponse, choose, validate};
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
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/join", post(join))
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
    let choice = choose(&meeting, &nodes, &req, now, s.token_ttl_secs)?;
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
