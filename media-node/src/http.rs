//! The node's HTTP surface: web client, WHIP and WHEP, WebSocket signalling, admin endpoints.
//!
//! Requests are checked here (token, content type, sizes) and turned into engine commands;
//! every refusal is an HTTP status with a one-line reason in the body.

use crate::config::DEV_SECRET;
use crate::driver::{Command, EngineHandle, SESSION_OUTBOX};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::process::CpuMeter;
use crate::relay::mesh::Relay;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use moim_wire::JoinClaims;
use moim_wire::admin::RoomAssignment;
use moim_wire::signal::{ClientMessage, MAX_FRAME_BYTES, ServerMessage};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Largest SDP body accepted on WHIP and WHEP.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// How long a WHEP request waits for a publisher on a linked node to be announced.
const WHEP_RELAY_WAIT: Duration = Duration::from_secs(3);
/// How long a WebSocket client has to send `join`.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// Token secret.
    pub secret: Arc<Vec<u8>>,
    /// Bearer token for `/status` and `/drain`, if set.
    pub admin_token: Option<Arc<String>>,
    /// Metrics.
    pub metrics: Metrics,
    /// CPU use of the process.
    pub cpu: CpuMeter,
    /// Start time.
    pub started: Instant,
    /// Development mode: `/dev/token` mints tokens for anyone.
    pub dev: bool,
    /// Relay links (with `--relay-listen`): assignments name upstream nodes to dial.
    pub relay: Option<Arc<Relay>>,
    /// `--fault-injection`: the test-only fault endpoint answers.
    pub faults: bool,
    /// Signalling sockets that have not joined yet, at most [`MAX_UNJOINED`] at once.
    pub unjoined: Arc<tokio::sync::Semaphore>,
}

/// Signalling sockets that may wait for their `join` at once; more are refused (`503`) until
/// some join or time out, so sockets that never join cannot pile up.
pub const MAX_UNJOINED: usize = 256;
/// Largest WebSocket message read. Frames over [`MAX_FRAME_BYTES`] and up to this get an
/// error naming the limit; larger ones a bare close (1009). With [`MAX_UNJOINED`] it bounds
/// what sockets that have not joined can hold: 64 MiB.
const MAX_WS_MESSAGE: usize = 256 * 1024;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/sdk/moim.js", get(sdk_js))
        .route("/sdk/moim.d.ts", get(sdk_types))
        .route("/sdk/package.json", get(sdk_package))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/drain", post(drain).delete(undrain))
        .route("/admin/rooms/{room}", put(assign_room).delete(release_room))
        .route("/admin/rooms/{room}/move", post(move_room))
        .route("/admin/fault/{kind}", post(fault))
        .route("/ws", get(ws))
        .route("/dev/token", get(dev_token))
        .route("/whip/{room}", post(whip).options(preflight))
        .route(
            "/whip/{room}/{resource}",
            delete(delete_resource).options(preflight),
        )
        .route("/whep/{room}", post(whep).options(preflight))
        .route(
            "/whep/{room}/{resource}",
            delete(delete_resource).options(preflight),
        )
        .layer(DefaultBodyLimit::max(MAX_SDP_BYTES))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../web/index.html"),
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../web/app.js"),
    )
}

/// The client library's files, importable from pages on other origins (a platform team's own
/// front end): public, static, so any origin may read them.
fn sdk_file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn sdk_js() -> impl IntoResponse {
    sdk_file(
        "text/javascript; charset=utf-8",
        include_str!("../web/sdk/moim.js"),
    )
}

async fn sdk_types() -> impl IntoResponse {
    sdk_file(
        "application/typescript; charset=utf-8",
        include_str!("../web/sdk/moim.d.ts"),
    )
}

async fn sdk_package() -> impl IntoResponse {
    sdk_file("application/json", include_str!("../web/sdk/package.json"))
}

/// Healthy while the engine task turns (see [`crate::driver::Heartbeat`]).
async fn healthz(State(s): State<AppState>) -> Response {
    let age = s.engine.heartbeat.age();
    if age > crate::driver::STALLED_AFTER {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("engine stalled: no turn for {} ms\n", age.as_millis()),
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.engine.heartbeat.age() > crate::driver::STALLED_AFTER {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine stalled\n").into_response();
    }
    if *s.engine.draining.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Whether `a` equals `b`, in a time that depends on their lengths only (an attacker timing
/// refusals learns nothing of the token's bytes).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Admits an admin request: the bearer must be the admin token. Without one (only `--dev`
/// starts so), admin is open.
fn check_admin(s: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    match &s.admin_token {
        None => Ok(()),
        Some(t) => match bearer(headers) {
            Some(b) if same_secret(b.as_bytes(), t.as_bytes()) => Ok(()),
            Some(_) => Err(Error::Forbidden("admin token does not match")),
            None => Err(Error::MissingToken),
        },
    }
}

async fn status(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::Status { reply: tx })?;
    let mut st = rx.await.map_err(|_| Error::EngineUnavailable)?;
    st.cpu_cores = s.cpu.cores();
    st.uptime_secs = s.started.elapsed().as_secs();
    Ok(Json(st).into_response())
}

#[derive(serde::Deserialize)]
struct DrainQuery {
    /// For good, as SIGTERM (the preStop hook): `DELETE /drain` is refused afterwards.
    #[serde(default, rename = "final")]
    for_good: bool,
}

/// `POST /drain`: no new rooms. `?final=true` drains for good.
async fn drain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DrainQuery>,
) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    s.engine.send(if q.for_good {
        Command::Terminate
    } else {
        Command::Drain
    })?;
    Ok((StatusCode::ACCEPTED, "draining\n").into_response())
}

/// `POST /admin/fault/engine-panic`: the engine task panics (only with `--fault-injection`).
async fn fault(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(kind): Path<String>,
) -> Result<Response, Error> {
    if !s.faults {
        return Err(Error::NotFound);
    }
    check_admin(&s, &headers)?;
    match kind.as_str() {
        "engine-panic" => {
            s.engine.send(Command::Panic)?;
            Ok((StatusCode::ACCEPTED, "engine panic injected\n").into_response())
        }
        _ => Err(Error::NotFound),
    }
}

/// `DELETE /drain`: take new rooms again. 409 once the process is stopping (SIGTERM).
async fn undrain(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::Undrain { reply: tx })?;
    match rx.await.map_err(|_| Error::EngineUnavailable)? {
        Ok(()) => Ok("serving\n".into_response()),
        Err(_) => Ok((StatusCode::CONFLICT, "stopping: cannot be taken back\n").into_response()),
    }
}

/// `POST /admin/rooms/{room}/move`: the room's share moved to another node; its participants
/// are told to reconnect at the body's `url`. 200 with how many were told.
async fn move_room(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    if room.is_empty() || room.len() > moim_wire::admin::MAX_ROOM_LEN {
        return Err(Error::BadRequest("room name is empty or too long".into()));
    }
    let mv: moim_wire::admin::RoomMove =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("room move: {e}")))?;
    mv.validate().map_err(Error::BadRequest)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::MoveRoom {
        room: room.clone(),
        url: mv.url,
        reply: tx,
    })?;
    let told = rx.await.map_err(|_| Error::EngineUnavailable)?;
    if let Some(relay) = &s.relay {
        relay.release(&room);
    }
    Ok(format!("{told} participants sent on\n").into_response())
}

/// `PUT /admin/rooms/{room}`: the operator's plan for one meeting on this node.
/// 200 taken, 409 when a newer assignment is held, 400 for a body the node cannot use.
async fn assign_room(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    let assignment: RoomAssignment = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("room assignment: {e}")))?;
    let upstream: std::collections::BTreeMap<String, String> = assignment
        .links
        .iter()
        .filter(|l| l.upstream)
        .filter_map(|l| Some((l.address.clone()?, l.peer.clone())))
        .collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::Assign {
        room: room.clone(),
        assignment,
        reply: tx,
    })?;
    if rx.await.map_err(|_| Error::EngineUnavailable)?? {
        match &s.relay {
            Some(relay) => relay.assign(&room, upstream),
            None if !upstream.is_empty() => {
                tracing::warn!(%room, "the assignment names relay links, but this node has no --relay-listen");
            }
            None => {}
        }
        Ok("assigned\n".into_response())
    } else {
        Ok((StatusCode::CONFLICT, "a newer assignment is held\n").into_response())
    }
}

/// `DELETE /admin/rooms/{room}`: the meeting no longer uses this node. 204 either way.
async fn release_room(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    check_admin(&s, &headers)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::Release {
        room: room.clone(),
        reply: tx,
    })?;
    rx.await.map_err(|_| Error::EngineUnavailable)?;
    if let Some(relay) = &s.relay {
        relay.release(&room);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    #[serde(default)]
    name: String,
}

/// Mints a one-day token for the web client; only on `--dev` nodes.
async fn dev_token(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<DevTokenQuery>,
) -> Response {
    // Only with the public development secret: a --dev node given a real secret (as
    // `operator local` runs them) must not mint tokens signed with it for anyone who asks.
    if !s.dev || s.secret.as_slice() != DEV_SECRET.as_bytes() {
        return (
            StatusCode::NOT_FOUND,
            "development tokens are only served with --dev and the development secret\n",
        )
            .into_response();
    }
    let claims = JoinClaims {
        identity: q.identity,
        room: q.room,
        name: q.name,
        can_publish: true,
        can_subscribe: true,
        can_chat: None,
        exp: now_unix() + 86_400,
        nbf: None,
    };
    claims.sign(&s.secret).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn verify(s: &AppState, token: &str) -> Result<JoinClaims, Error> {
    let r = JoinClaims::verify(token, &s.secret, now_unix());
    if r.is_err() {
        s.metrics.reject("token");
    }
    Ok(r?)
}

/// Checks the bearer token, that it admits to `room`, and that the body is SDP.
fn check_whip_request(
    s: &AppState,
    room: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(JoinClaims, String), Error> {
    let claims = verify(s, bearer(headers).ok_or(Error::MissingToken)?)?;
    if claims.room != room {
        s.metrics.reject("forbidden");
        return Err(Error::Forbidden("token is for another room"));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/sdp") {
        return Err(Error::BadRequest(
            "content type must be application/sdp".into(),
        ));
    }
    let sdp = std::str::from_utf8(body).map_err(|_| Error::Sdp("body is not UTF-8".into()))?;
    if !sdp.starts_with("v=0") {
        return Err(Error::Sdp(
            "body is not an SDP offer (must start with v=0)".into(),
        ));
    }
    Ok((claims, sdp.to_owned()))
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    r
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    r
}

fn created(kind: &str, room: &str, resource: &str, answer: String) -> Response {
    let location = format!("/{kind}/{room}/{resource}");
    let mut r = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        answer,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    cors(r)
}

async fn whip(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (claims, sdp) = check_whip_request(&s, &room, &headers, &body)?;
        let (resource, answer) = s
            .engine
            .call(|reply| Command::Whip { claims, sdp, reply })
            .await?;
        Ok::<_, Error>(created("whip", &room, &resource, answer))
    }
    .await;
    result.unwrap_or_else(|e| cors(e.into_response()))
}

async fn whep(
    State(s): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (claims, sdp) = check_whip_request(&s, &room, &headers, &body)?;
        // A publisher on a linked node takes a moment to be announced here.
        let deadline = Instant::now() + WHEP_RELAY_WAIT;
        let (resource, answer) = loop {
            let (claims, sdp) = (claims.clone(), sdp.clone());
            match s
                .engine
                .call(|reply| Command::Whep { claims, sdp, reply })
                .await
            {
                Err(Error::RelayPending) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Error::RelayPending) => return Err(Error::NoPublisher(room.clone())),
                r => break r?,
            }
        };
        Ok::<_, Error>(created("whep", &room, &resource, answer))
    }
    .await;
    result.unwrap_or_else(|e| cors(e.into_response()))
}

async fn delete_resource(
    State(s): State<AppState>,
    Path((room, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = verify(&s, bearer(&headers).ok_or(Error::MissingToken)?)?;
        if claims.room != room {
            return Err(Error::Forbidden("token is for another room"));
        }
        s.engine
            .call(|reply| Command::Delete { resource, reply })
            .await?;
        Ok::<_, Error>(StatusCode::OK.into_response())
    }
    .await;
    cors(result.unwrap_or_else(IntoResponse::into_response))
}

async fn ws(State(s): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(unjoined) = s.unjoined.clone().try_acquire_owned() else {
        s.metrics.reject("unjoined_sockets");
        return Error::AtCapacityFor("too many signalling sockets waiting to join").into_response();
    };
    // Frames up to MAX_WS_MESSAGE are read so that an oversized one gets a clear error
    // instead of a bare protocol close; anything above MAX_FRAME_BYTES is refused after reading.
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| ws_session(s, socket, unjoined))
}

async fn send_msg(socket: &mut WebSocket, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn send_error(socket: &mut WebSocket, e: &Error) -> bool {
    send_msg(
        socket,
        &ServerMessage::Error {
            code: e.code().into(),
            message: e.to_string(),
        },
    )
    .await
}

async fn close_with(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        })))
        .await;
}

/// Reads one client message; `Err` carries the close code and the error to report.
fn parse_frame(msg: Message) -> Option<Result<ClientMessage, (u16, Error)>> {
    let text = match msg {
        Message::Text(t) => t.to_string(),
        Message::Binary(b) => match String::from_utf8(b.to_vec()) {
            Ok(t) => t,
            Err(_) => {
                return Some(Err((
                    1003,
                    Error::BadRequest("frames must be UTF-8 JSON".into()),
                )));
            }
        },
        Message::Close(_) => return None,
        Message::Ping(_) | Message::Pong(_) => return Some(Err((0, Error::NotFound))),
    };
    if text.len() > MAX_FRAME_BYTES {
        return Some(Err((
            1009,
            Error::BadRequest(format!(
                "frame of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
                text.len()
            )),
        )));
    }
    Some(serde_json::from_str(&text).map_err(|e| {
        (
            0,
            Error::BadRequest(format!("not a signalling message: {e}")),
        )
    }))
}

async fn ws_session(
    s: AppState,
    mut socket: WebSocket,
    unjoined: tokio::sync::OwnedSemaphorePermit,
) {
    // 1. join
    let first = match tokio::time::timeout(JOIN_DEADLINE, socket.recv()).await {
        Ok(Some(Ok(m))) => parse_frame(m),
        _ => return,
    };
    let token = match first {
        Some(Ok(ClientMessage::Join { token })) => token,
        Some(Err((code, e))) if code != 0 => {
            send_error(&mut socket, &e).await;
            return close_with(socket, code, "frame too large").await;
        }
        None => return,
        _ => {
            send_error(
                &mut socket,
                &Error::BadRequest("first message must be join".into()),
            )
            .await;
            return close_with(socket, 1008, "join first").await;
        }
    };
    drop(unjoined);
    let claims = match verify(&s, &token) {
        Ok(c) => c,
        Err(e) => {
            send_error(&mut socket, &e).await;
            return close_with(socket, 1008, "unauthorized").await;
        }
    };
    let (outbox_tx, mut outbox) = mpsc::channel(SESSION_OUTBOX);
    let resume_claims = claims.clone();
    let joined = s
        .engine
        .call(|reply| Command::Join {
            claims,
            outbox: outbox_tx,
            reply,
        })
        .await;
    let (session, joined) = match joined {
        Ok(j) => j,
        Err(e) => {
            send_error(&mut socket, &e).await;
            return close_with(socket, 1013, "join refused").await;
        }
    };
    tracing::info!(session, "participant joined");
    if !send_msg(&mut socket, &joined).await {
        let _ = s.engine.send(Command::Leave { session });
        return;
    }
    // 2. the session; the first tick sends `resume` at once
    let mut resume = tokio::time::interval(Duration::from_secs(moim_wire::RESUME_REFRESH_SECS));
    loop {
        tokio::select! {
            _ = resume.tick() => {
                if let Some(msg) = resume_message(&s, &resume_claims).await
                    && !send_msg(&mut socket, &msg).await
                {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(m)) = incoming else { break };
                match parse_frame(m) {
                    None => break,
                    Some(Err((0, Error::NotFound))) => {}
                    Some(Err((code, e))) => {
                        send_error(&mut socket, &e).await;
                        if code != 0 {
                            let _ = s.engine.send(Command::Leave { session });
                            return close_with(socket, code, "frame too large").await;
                        }
                    }
                    Some(Ok(msg)) => {
                        if let Err(e) = client_message(&s, session, msg, &mut socket).await {
                            if matches!(e, Error::NotFound) { break; }
                            send_error(&mut socket, &e).await;
                        }
                    }
                }
            }
            out = outbox.recv() => {
                let Some(msg) = out else {
                    // The engine ended the session.
                    return close_with(socket, 1000, "session ended").await;
                };
                if !send_msg(&mut socket, &msg).await { break; }
            }
        }
    }
    let _ = s.engine.send(Command::Leave { session });
    tracing::info!(session, "participant left");
}

/// The `resume` message for a participant with `claims`: a renewed token (same grants, valid
/// [`moim_wire::RESUME_TTL_SECS`] from now) and where to go if this node stops answering.
/// Renewing is the node's to do because it signs with the deployment's token secret, and a
/// participant it admitted stays admitted while connected; what the token grants never grows.
async fn resume_message(s: &AppState, claims: &JoinClaims) -> Option<ServerMessage> {
    let room = claims.room.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.engine.send(Command::Resume { room, reply: tx }).ok()?;
    let (fallback_urls, rejoin_url, region) = rx.await.ok()?;
    let expires_at = now_unix() + moim_wire::RESUME_TTL_SECS;
    let renewed = JoinClaims {
        exp: expires_at,
        nbf: None,
        ..claims.clone()
    };
    Some(ServerMessage::Resume {
        token: renewed.sign(&s.secret),
        expires_at,
        region,
        fallback_urls,
        rejoin_url,
    })
}

async fn client_message(
    s: &AppState,
    session: u64,
    msg: ClientMessage,
    socket: &mut WebSocket,
) -> Result<(), Error> {
    match msg {
        ClientMessage::Join { .. } => Err(Error::BadRequest("already joined".into())),
        ClientMessage::PublishOffer { sdp, tracks } => {
            if sdp.len() > MAX_SDP_BYTES {
                return Err(Error::Sdp("offer too large".into()));
            }
            let answer = s
                .engine
                .call(|reply| Command::Publish {
                    session,
                    sdp,
                    tracks,
                    reply,
                })
                .await?;
            send_msg(socket, &ServerMessage::PublishAnswer { sdp: answer }).await;
            Ok(())
        }
        ClientMessage::SubscribeAnswer { sdp } => {
            s.engine
                .call(|reply| Command::SubscribeAnswer {
                    session,
                    sdp,
                    reply,
                })
                .await
        }
        ClientMessage::LayerPreference {
            track_id,
            max_width,
            max_height,
        } => {
            s.engine
                .call(|reply| Command::LayerPreference {
                    session,
                    track_id,
                    max_width,
                    max_height,
                    reply,
                })
                .await
        }
        ClientMessage::LastN { n, pinned } => {
            s.engine
                .call(|reply| Command::LastN {
                    session,
                    n,
                    pinned,
                    reply,
                })
                .await
        }
        ClientMessage::RaiseHand { raised } => {
            s.engine
                .call(|reply| Command::RaiseHand {
                    session,
                    raised,
                    reply,
                })
                .await
        }
        ClientMessage::Mute { track_id, muted } => {
            s.engine
                .call(|reply| Command::Mute {
                    session,
                    track_id,
                    muted,
                    reply,
                })
                .await
        }
        ClientMessage::Chat { text } => {
            s.engine
                .call(|reply| Command::Chat {
                    session,
                    text,
                    reply,
                })
                .await
        }
        ClientMessage::IceRestart => {
            s.engine
                .call(|reply| Command::IceRestart { session, reply })
                .await
        }
        ClientMessage::Leave => Err(Error::NotFound),
    }
}
