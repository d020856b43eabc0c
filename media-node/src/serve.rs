//! Start-up and shutdown of a serving node: sockets, engine task, HTTP server, draining.
//!
//! SIGTERM (or `POST /drain`, which `DELETE /drain` undoes) starts draining: `/readyz` turns false, no new rooms start,
//! current rooms continue; the process exits once the last session ends or at
//! `--drain-timeout`. A second SIGTERM or Ctrl-C exits at once.

use crate::config::{DEV_SECRET, ServeArgs};
use crate::driver::{self, Command};
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::process::CpuMeter;
use crate::relay::{
    self,
    link::RelayEndpoint,
    tls::{RelayTls, RelayTrust},
};
use crate::sfu::engine::{Engine, EngineConfig};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, UdpSocket};
use tracing_subscriber::EnvFilter;

fn token_secret(args: &ServeArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.token_secret_file {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(s.trim().as_bytes().to_vec());
    }
    if let Some(s) = &args.token_secret {
        return Ok(s.as_bytes().to_vec());
    }
    if args.dev {
        tracing::warn!(
            secret = DEV_SECRET,
            "development mode: join tokens are signed with this fixed, public secret; never use --dev in production"
        );
        return Ok(DEV_SECRET.as_bytes().to_vec());
    }
    bail!("no token secret: give --token-secret, --token-secret-file, or --dev for development")
}

/// Refuses configurations that would leave the node open: no admin token outside `--dev`, an
/// empty secret or admin token, and `--dev` (a public token secret, open admin) on an address
/// other machines reach.
fn check_closed(args: &ServeArgs, secret: &[u8]) -> anyhow::Result<()> {
    if secret.is_empty() {
        bail!("the token secret is empty: anyone could sign join tokens");
    }
    match args.admin_token.as_deref() {
        Some("") => bail!("--admin-token (MOIM_ADMIN_TOKEN) is empty"),
        None if !args.dev => bail!(
            "no admin token: give --admin-token (MOIM_ADMIN_TOKEN); without one /status, /drain \
             and /admin/* would be open to anyone (only --dev, on loopback, runs without)"
        ),
        _ => {}
    }
    if args.dev {
        let listens = [Some(args.http), Some(args.udp), args.relay_listen];
        if let Some(a) = listens
            .into_iter()
            .flatten()
            .find(|a| !a.ip().is_loopback())
        {
            bail!(
                "--dev listens on loopback only ({a} is not): development mode has a public token \
                 secret and may have an open admin API"
            );
        }
    }
    Ok(())
}

/// Asks for `bytes` of kernel buffer on the media socket each way; warns when the kernel gave
/// less (Linux reports double what it grants, for its bookkeeping, and caps the request at
/// `net.core.rmem_max`/`wmem_max`).
fn size_buffers(socket: &UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    let got = |r: std::io::Result<usize>| r.map(|b| b / 2).unwrap_or(0);
    let (recv, send) = (got(sock.recv_buffer_size()), got(sock.send_buffer_size()));
    if recv < bytes || send < bytes {
        tracing::warn!(
            asked = bytes,
            receive = recv,
            send,
            "the media socket's buffers are smaller than --udp-buffer: raise the sysctls \
             net.core.rmem_max and net.core.wmem_max on the host, or the node drops packets \
             under bursts"
        );
    }
}

/// Runs a node until it has drained or is interrupted.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let secret = token_secret(&args)?;
    check_closed(&args, &secret)?;
    let socket = UdpSocket::bind(args.udp)
        .await
        .with_context(|| format!("binding UDP {}", args.udp))?;
    size_buffers(&socket, args.udp_buffer);
    let local_addr = socket.local_addr()?;
    if local_addr.ip().is_unspecified() && args.public_ip.is_none() {
        bail!(
            "--udp {local_addr} is a wildcard address: give --public-ip, the address clients reach the node at"
        );
    }
    let candidate_addr = SocketAddr::new(
        args.public_ip.unwrap_or(local_addr.ip()),
        args.public_port.unwrap_or(local_addr.port()),
    );
    let node_id = default_node_id(
        args.node_id.as_deref(),
        std::fs::read_to_string("/etc/hostname").ok().as_deref(),
        args.dev,
        local_addr.port(),
    );
    let metrics = Metrics::new();
    let engine = Engine::new(
        EngineConfig {
            local_addr,
            candidate_addr,
            max_room_participants: args.max_room_participants,
            max_sessions: args.max_sessions,
            node_id: node_id.clone(),
            region: args.region.clone(),
            connect_timeout: args.connect_timeout,
            relay_fit: args.relay_fit,
        },
        metrics.clone(),
    );
    let (handle, engine_task) = driver::spawn(engine, socket);
    // A panic in the engine (a bug) ends the process rather than leave one that answers HTTP
    // while no media flows: the pod restarts, the operator places its meetings again and the
    // participants rejoin.
    tokio::spawn(async move {
        if let Err(e) = engine_task.await
            && e.is_panic()
        {
            tracing::error!("the engine task panicked; exiting so the node is restarted");
            std::process::exit(70);
        }
    });
    let relay = if let Some(relay_addr) = args.relay_listen {
        let trust = match (&args.relay_ca, &args.relay_cert, &args.relay_key) {
            (Some(ca), Some(cert), Some(key)) => RelayTrust::Ca {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, None) if args.dev => RelayTrust::Dev,
            _ => bail!(
                "relay links need --relay-ca, --relay-cert and --relay-key (or --dev on one machine)"
            ),
        };
        let endpoint = Arc::new(RelayEndpoint::bind(
            relay_addr,
            RelayTls::new(&trust)?,
            &node_id,
            &args.region,
        )?);
        tracing::info!(relay = %endpoint.local_addr()?, peers = ?args.peers, "relay links listening");
        relay::mesh::watch_tls(
            endpoint.clone(),
            trust,
            args.relay_tls_check,
            metrics.clone(),
        );
        Some(relay::mesh::Relay::start(
            endpoint,
            args.peers.clone(),
            handle.clone(),
            metrics.clone(),
        ))
    } else if !args.peers.is_empty() {
        bail!("--peer needs --relay-listen (the address this node's relay links use)");
    } else {
        None
    };
    let state = AppState {
        engine: handle.clone(),
        secret: Arc::new(secret),
        admin_token: args.admin_token.clone().map(Arc::new),
        metrics,
        cpu: CpuMeter::start(),
        started: Instant::now(),
        dev: args.dev,
        relay,
        faults: args.fault_injection,
        unjoined: Arc::new(tokio::sync::Semaphore::new(crate::http::MAX_UNJOINED)),
    };
    let listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP {}", args.http))?;
    tracing::info!(
        http = %listener.local_addr()?,
        udp = %local_addr,
        candidate = %candidate_addr,
        region = %args.region,
        "media-node serving; web client at http://{}/",
        listener.local_addr()?
    );
    let server = axum::serve(listener, router(state));
    let mut drained = handle.drained.clone();
    let mut draining = handle.draining.clone();
    let drain_timeout = args.drain_timeout;
    let shutdown = async move {
        // Draining starts on SIGTERM/Ctrl-C (for good) or through `POST /drain` (the operator
        // may take the node back with `DELETE /drain`, and then it serves on).
        let mut terminating = false;
        loop {
            if !terminating {
                tokio::select! {
                    () = wait_for_term() => {
                        terminating = true;
                        let _ = handle.send(Command::Terminate);
                    }
                    // (A closed watch is an engine that died: the task above exits with 70;
                    // these branches must not win that race and exit cleanly.)
                    Ok(_) = draining.wait_for(|d| *d) => {}
                }
            }
            tracing::info!(
                ?drain_timeout,
                terminating,
                "draining: no new rooms; exiting when empty"
            );
            let deadline = tokio::time::sleep(drain_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    Ok(_) = drained.wait_for(|d| *d) => {
                        tracing::info!("drained: no sessions left");
                        return;
                    }
                    () = &mut deadline => {
                        tracing::warn!("drain timeout reached; exiting with sessions left");
                        return;
                    }
                    () = wait_for_term() => {
                        if terminating {
                            tracing::warn!("second signal; exiting now");
                            return;
                        }
                        terminating = true;
                        let _ = handle.send(Command::Terminate);
                    }
                    Ok(_) = draining.wait_for(|d| !*d), if !terminating => break,
                }
            }
            tracing::info!("serving again");
        }
    };
    tokio::select! {
        r = server.into_future() => r.context("http server")?,
        () = shutdown => {}
    }
    Ok(())
}

async fn wait_for_term() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The node's id: `--node-id`, else the host name (a pod's name on Kubernetes). Several
/// `--dev` nodes on one machine share the host name and would refuse each other as relay
/// peers, so in dev mode the media port (unique on the machine) is added.
fn default_node_id(given: Option<&str>, hostname: Option<&str>, dev: bool, port: u16) -> String {
    if let Some(id) = given {
        return id.to_owned();
    }
    let host = hostname
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("media-node");
    if dev {
        format!("{host}-{port}")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod node_id_tests {
    use super::default_node_id;

    #[test]
    fn dev_nodes_on_one_machine_get_distinct_ids_by_default() {
        let a = default_node_id(None, Some("laptop\n"), true, 7901);
        let b = default_node_id(None, Some("laptop\n"), true, 7911);
        assert_ne!(a, b);
        assert_eq!(a, "laptop-7901");
        assert_eq!(default_node_id(None, Some("pod-7\n"), false, 7901), "pod-7");
        assert_eq!(
            default_node_id(Some("seoul-1"), Some("laptop"), true, 1),
            "seoul-1"
        );
        assert_eq!(default_node_id(None, None, false, 1), "media-node");
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::size_buffers;

    #[tokio::test]
    async fn the_media_socket_gets_the_buffers_asked_for() {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        // Below every kernel's cap and unlike Linux's default, so that the size read back is
        // the one set.
        size_buffers(&socket, 150_000);
        let sock = socket2::SockRef::from(&socket);
        assert_eq!(sock.recv_buffer_size().expect("SO_RCVBUF") / 2, 150_000);
        assert_eq!(sock.send_buffer_size().expect("SO_SNDBUF") / 2, 150_000);
    }
}
