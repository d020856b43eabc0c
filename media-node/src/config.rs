//! Command-line and environment configuration of the `media-node` binary.
//!
//! Every flag has a `MOIM_...` environment variable; defaults run a development node on a
//! laptop (`media-node --dev`).

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use moim_wire::token::DEV_SECRET;

/// moim media node: a WebRTC SFU for video meetings.
#[derive(Debug, Parser)]
#[command(name = "media-node", version, about)]
pub struct Cli {
    /// What to do; without a subcommand the node serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a join token for a room.
    Token(TokenArgs),
    /// Ask the node serving on this machine to drain for good, and (with `--wait`) wait until
    /// its last participant has left: the media pod's preStop hook.
    Drain(DrainArgs),
}

/// Options of `media-node drain`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// The node's HTTP address (an unspecified address means this machine's loopback).
    #[arg(long, env = "MOIM_HTTP", default_value = "127.0.0.1:7880")]
    pub http: SocketAddr,
    /// The node's admin token.
    #[arg(long, env = "MOIM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Wait until no participant is left.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (Kubernetes ends the hook at the grace period anyway).
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options for serving.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Development mode: a fixed, publicly known token secret (unless one is given), no admin
    /// token needed, `/dev/token`, self-signed relay links. Loopback addresses only; a flag
    /// only (no environment variable, so that a stray `MOIM_DEV` cannot open a node).
    #[arg(long)]
    pub dev: bool,
    /// Tests only: `POST /admin/fault/engine-panic` (with the admin token) makes the engine
    /// panic, to check that a node whose engine died does not pass for healthy.
    #[arg(long, hide = true)]
    pub fault_injection: bool,
    /// HTTP listen address: web client, WHIP/WHEP, WebSocket signalling and admin API.
    #[arg(long, env = "MOIM_HTTP", default_value = "127.0.0.1:7880")]
    pub http: SocketAddr,
    /// UDP listen address for all WebRTC media (one port for every session).
    #[arg(long, env = "MOIM_UDP", default_value = "127.0.0.1:7881")]
    pub udp: SocketAddr,
    /// Address put in ICE candidates, when clients reach the node at another address than
    /// `--udp` (NAT, a Kubernetes NodePort or LoadBalancer). Port: `--public-port`, else `--udp`'s.
    #[arg(long, env = "MOIM_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// UDP port clients reach the node's media at, when it differs from the bound one (a
    /// NodePort Service, a port-mapping NAT).
    #[arg(long, env = "MOIM_PUBLIC_PORT")]
    pub public_port: Option<u16>,
    /// Secret that join tokens are signed with (HS256). Required unless `--dev`.
    #[arg(long, env = "MOIM_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// File holding the token secret (a mounted Kubernetes Secret), read at start-up.
    #[arg(long, env = "MOIM_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// Bearer token that `/status`, `/drain` and `/admin/*` require. Required unless `--dev`
    /// (a node without one refuses to start rather than serve its admin API to anyone).
    #[arg(long, env = "MOIM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Region this node serves (reported in `/status`).
    #[arg(long, env = "MOIM_REGION", default_value = "local")]
    pub region: String,
    /// Node id (reported in `/status`, and how relay peers know each other); defaults to the
    /// host name, with `--dev` the host name and the media port (several dev nodes on one
    /// machine must differ).
    #[arg(long, env = "MOIM_NODE_ID")]
    pub node_id: Option<String>,
    /// Bytes of kernel buffer asked for the media socket, each way. Every packet of every
    /// session waits there while the engine is busy: the default (about 200 KB on Linux)
    /// overflows under a room's bursts. The kernel caps it at `net.core.rmem_max` and
    /// `wmem_max`; the node warns when it got less.
    #[arg(long, env = "MOIM_UDP_BUFFER", default_value_t = 4 << 20)]
    pub udp_buffer: usize,
    /// Most participants in one room.
    #[arg(long, env = "MOIM_MAX_ROOM_PARTICIPANTS", default_value_t = 1500)]
    pub max_room_participants: usize,
    /// Most sessions (participants, WHIP, WHEP) on the node.
    #[arg(long, env = "MOIM_MAX_SESSIONS", default_value_t = 5000)]
    pub max_sessions: usize,
    /// When draining, exit at the latest after this long even if rooms remain.
    #[arg(long, env = "MOIM_DRAIN_TIMEOUT", default_value = "2h", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A session whose media connection has not completed this long after the offer is dropped.
    #[arg(long, env = "MOIM_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Hold back simulcast layers that do not fit a relay link's estimated capacity (see the
    /// README's cascade section); `--relay-fit false` sends whatever the far side asks for.
    #[arg(
        long,
        env = "MOIM_RELAY_FIT",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub relay_fit: bool,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "MOIM_LOG", default_value = "info")]
    pub log: String,
    /// UDP address for relay links (QUIC) from other media nodes; unset: no cascade.
    #[arg(long, env = "MOIM_RELAY_LISTEN")]
    pub relay_listen: Option<SocketAddr>,
    /// Another media node's relay address to link with (repeatable). Rooms are one room
    /// across linked nodes. Listing a node on one side is enough.
    #[arg(long = "peer", env = "MOIM_PEERS", value_delimiter = ',')]
    pub peers: Vec<SocketAddr>,
    /// CA certificate (PEM) that relay peers' certificates must chain to (production).
    #[arg(long, env = "MOIM_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// This node's relay certificate chain (PEM), issued for the name `moim-relay`.
    #[arg(long, env = "MOIM_RELAY_CERT")]
    pub relay_cert: Option<PathBuf>,
    /// This node's relay private key (PEM).
    #[arg(long, env = "MOIM_RELAY_KEY")]
    pub relay_key: Option<PathBuf>,
    /// How often the relay CA, certificate and key files are checked for a renewal (loaded
    /// for new links without a restart).
    #[arg(long, env = "MOIM_RELAY_TLS_CHECK", default_value = "10s", value_parser = parse_duration)]
    pub relay_tls_check: Duration,
}

/// Options for `media-node token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Sign with the development secret.
    #[arg(long, env = "MOIM_DEV")]
    pub dev: bool,
    /// Secret to sign with (instead of `--dev`).
    #[arg(long, env = "MOIM_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Room the token admits to.
    #[arg(long)]
    pub room: String,
    /// Identity of the participant.
    #[arg(long)]
    pub identity: String,
    /// Display name (defaults to the identity).
    #[arg(long, default_value = "")]
    pub name: String,
    /// How long the token is valid.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Token does not allow publishing.
    #[arg(long)]
    pub no_publish: bool,
    /// Token does not allow subscribing.
    #[arg(long)]
    pub no_subscribe: bool,
    /// Whether the token allows chat (`true` or `false`); by default it follows publishing.
    #[arg(long)]
    pub chat: Option<bool>,
}

/// Parses `90s`, `15m`, `2h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, millis) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else {
        match s.chars().last() {
            Some('s') => (&s[..s.len() - 1], 1000),
            Some('m') => (&s[..s.len() - 1], 60_000),
            Some('h') => (&s[..s.len() - 1], 3_600_000),
            _ => (s, 1000),
        }
    };
    num.parse::<u64>()
        .map(|n| Duration::from_millis(n.saturating_mul(millis)))
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 90s, 15m or 2h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_parses_dev_and_token() {
        let c = Cli::try_parse_from(["media-node", "--dev"]).expect("parses");
        assert!(c.serve.dev && c.command.is_none());
        let c = Cli::try_parse_from([
            "media-node",
            "token",
            "--dev",
            "--room",
            "r",
            "--identity",
            "i",
        ])
        .expect("parses");
        assert!(matches!(c.command, Some(Command::Token(t)) if t.dev && t.room == "r"));
    }
}
