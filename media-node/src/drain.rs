//! `media-node drain`: the preStop hook of a media pod. It asks the node on this machine to
//! drain for good (`POST /drain?final=true`: the operator cannot take it back) and, with
//! `--wait`, polls `/status` until no participant is left, so Kubernetes sends SIGTERM only to
//! an empty node. Plain HTTP/1.1 over a TCP socket: the hook must not depend on anything the
//! image does not have.

use crate::config::DrainArgs;
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How often `--wait` looks again.
const POLL: Duration = Duration::from_secs(2);
/// Largest answer read from the node.
const MAX_ANSWER: u64 = 1 << 20;

/// Runs the subcommand.
pub fn run(args: &DrainArgs) -> anyhow::Result<()> {
    let addr = local(args.http);
    let token = args.admin_token.as_deref();
    let (code, body) = request(addr, "POST", "/drain?final=true", token)?;
    if !(200..300).contains(&code) {
        bail!("POST /drain answered {code}: {}", body.trim());
    }
    eprintln!("media-node at {addr} is draining");
    if !args.wait {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        match request(addr, "GET", "/status", token) {
            Ok((200, body)) => {
                let left = participants(&body)?;
                if left == 0 {
                    eprintln!("drained after {:.0?}", started.elapsed());
                    return Ok(());
                }
                eprintln!("{left} participants left");
            }
            Ok((code, body)) => eprintln!("GET /status answered {code}: {}", body.trim()),
            // The node exited once empty: nothing left to wait for.
            Err(_) => return Ok(()),
        }
        if started.elapsed() >= args.timeout {
            bail!("still not drained after {:?}", args.timeout);
        }
        std::thread::sleep(POLL);
    }
}

/// A listen address as a client reaches it on this machine.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn participants(status: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(status).context("/status is not JSON")?;
    v["participants"]
        .as_u64()
        .context("/status has no participant count")
}

/// One request; returns the status code and body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}"))?;
    // Bodies come chunked or not; the JSON object sits between the first `{` and last `}`.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => body[a..=b].to_owned(),
        _ => body.to_owned(),
    };
    Ok((code, body))
}
