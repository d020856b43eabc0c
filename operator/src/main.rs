//! The `operator` binary: `operator run` reconciles Meetings and MediaNodes and serves the
//! join API; `operator local` runs the local fabric (operator core, media-node children in
//! three regions, a join page) on one machine; `operator crdgen` prints every CRD (or writes
//! them to a folder).

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use moim_operator::context::Settings;
use moim_operator::pod::PodSettings;
use moim_operator::run::{RunOptions, run};
use moim_operator::secret::SecretSource;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "moim operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reconcile Meetings and MediaNodes, and serve the join API.
    Run(Box<RunArgs>),
    /// moim on one machine, no Kubernetes: media nodes in three regions, cascaded, meetings
    /// from a folder of Meeting YAML files, and a join page.
    Local(Box<moim_operator::local::LocalArgs>),
    /// Print every CustomResourceDefinition as YAML (what `crds/` holds).
    Crdgen {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Options of `operator run`.
#[derive(Args)]
struct RunArgs {
    /// Watch only this namespace; unset watches every namespace.
    #[arg(long, env = "MOIM_NAMESPACE")]
    namespace: Option<String>,
    /// Join API, /metrics, /healthz and /readyz.
    #[arg(long, env = "MOIM_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// File of join API keys, one per line (a mounted Secret; re-read on every request).
    #[arg(long, env = "MOIM_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// File holding the join token secret the media nodes verify with.
    #[arg(long, env = "MOIM_TOKEN_SECRET_FILE")]
    token_secret_file: Option<PathBuf>,
    /// File holding the media nodes' admin token.
    #[arg(long, env = "MOIM_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// How long a join token is valid (seconds).
    #[arg(long, env = "MOIM_JOIN_TOKEN_TTL", default_value_t = 600)]
    join_token_ttl: u64,
    /// Lease used for leader election; empty disables election (one replica only).
    #[arg(long, env = "MOIM_LEASE_NAME", default_value = "moim-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "MOIM_LEASE_NAMESPACE", default_value = "moim-system")]
    lease_namespace: String,
    /// This replica's identity in the election (set it to the pod name).
    #[arg(long, env = "MOIM_POD_NAME", default_value = "moim-operator-0")]
    identity: String,
    /// media-node image for MediaNode pods.
    #[arg(
        long,
        env = "MOIM_MEDIA_IMAGE",
        default_value = "ghcr.io/moim-dev/media-node:0.1.0"
    )]
    media_image: String,
    /// Run media pods on the host network.
    #[arg(long, env = "MOIM_MEDIA_HOST_NETWORK")]
    media_host_network: bool,
    /// Expose media pods' UDP port as a hostPort.
    #[arg(long, env = "MOIM_MEDIA_HOST_PORT")]
    media_host_port: bool,
    /// Expose each media node's UDP port through its own Service: `NodePort` or
    /// `LoadBalancer` (empty: none; host networking, a host port or the pod IP).
    #[arg(long, env = "MOIM_MEDIA_SERVICE", default_value = "")]
    media_service: String,
    /// Seconds a media pod may take to drain after SIGTERM.
    #[arg(long, env = "MOIM_MEDIA_GRACE_SECONDS", default_value_t = 7200)]
    media_grace_seconds: i64,
    /// Secret with `token-secret` and `admin-token` for media pods.
    #[arg(long, env = "MOIM_MEDIA_SECRET", default_value = "moim-node-secrets")]
    media_secret: String,
    /// Secret with the relay links' mutual TLS (`ca.crt`, `tls.crt`, `tls.key`, as cert-manager
    /// writes them); unset, media nodes are not cascaded.
    #[arg(long, env = "MOIM_MEDIA_RELAY_SECRET")]
    media_relay_secret: Option<String>,
    /// UDP port of relay links between media nodes.
    #[arg(long, env = "MOIM_MEDIA_RELAY_PORT", default_value_t = 7882)]
    media_relay_port: u16,
    /// URL browsers join a node at; `{podIP}`, `{node}`, `{region}`, `{port}` are filled in.
    #[arg(
        long,
        env = "MOIM_SIGNALLING_URL_TEMPLATE",
        default_value = "http://{podIP}:{port}"
    )]
    signalling_url_template: String,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "MOIM_LOG", default_value = "info")]
    log: String,
    /// TURN server handed out by the join API (repeatable): `REGION=turn:HOST:PORT` for
    /// participants joining a node in REGION, or `turn:HOST:PORT` for every other region.
    #[arg(long = "turn-url", env = "MOIM_TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// File with the secret shared with the TURN servers (coturn's `static-auth-secret`).
    #[arg(long, env = "MOIM_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// Seconds a TURN credential is valid.
    #[arg(long, env = "MOIM_TURN_TTL", default_value_t = 3600)]
    turn_ttl: u64,
    /// Round-trip times between regions in milliseconds, `seoul:frankfurt=230,...`: a region
    /// that loses every node is served from its nearest, and participants fall back nearest
    /// first. Pairs not given count as far.
    #[arg(long, env = "MOIM_REGION_DISTANCES", default_value = "")]
    region_distances: moim_operator::regions::Distances,
    /// The operator's HTTP address as browsers reach it (`https://moim.example.com`), when
    /// it is exposed to them: a participant whose node dies asks `{url}/v1/rejoin` where to
    /// go. Unset, participants fall back to the meeting's other nodes only.
    #[arg(long, env = "MOIM_PUBLIC_URL")]
    public_url: Option<String>,
}

/// TURN settings from the flags: none without URLs; URLs need the secret.
fn turn_config(
    urls: &[String],
    secret_file: Option<PathBuf>,
    ttl_secs: u64,
) -> anyhow::Result<Option<moim_operator::turn::TurnConfig>> {
    if urls.is_empty() {
        return Ok(None);
    }
    let urls = moim_operator::turn::parse_urls(urls).map_err(anyhow::Error::msg)?;
    let secret = secret_file.context("--turn-url needs --turn-secret-file")?;
    Ok(Some(moim_operator::turn::TurnConfig {
        secret: SecretSource::File(secret),
        urls,
        ttl_secs,
    }))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Local(args) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .init();
            tokio::runtime::Runtime::new()?
                .block_on(moim_operator::local::run(*args))
                .context("local fabric stopped")?;
        }
        Cmd::Run(args) => {
            let args = *args;
            // Two TLS backends end up linked (kube's and reqwest's); pick ring for the process.
            let _ = rustls::crypto::ring::default_provider().install_default();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
                .init();
            let opts = RunOptions {
                namespace: args.namespace,
                listen: args.listen,
                api_keys: SecretSource::from_flags(None, args.api_keys_file),
                token_secret: SecretSource::from_flags(None, args.token_secret_file),
                admin_token: SecretSource::from_flags(None, args.admin_token_file),
                token_ttl_secs: args.join_token_ttl,
                lease: (!args.lease_name.is_empty())
                    .then_some((args.lease_name, args.lease_namespace)),
                identity: args.identity,
                turn: turn_config(&args.turn_urls, args.turn_secret_file, args.turn_ttl)?,
                settings: Settings {
                    pod: PodSettings {
                        image: args.media_image,
                        host_network: args.media_host_network,
                        host_port: args.media_host_port,
                        service: moim_operator::pod::MediaService::parse(&args.media_service)
                            .map_err(anyhow::Error::msg)?,
                        termination_grace_seconds: args.media_grace_seconds,
                        secret_name: args.media_secret,
                        signalling_url_template: args.signalling_url_template,
                        relay_secret: args.media_relay_secret,
                        relay_port: args.media_relay_port,
                        ..PodSettings::default()
                    },
                    distances: args.region_distances,
                    rejoin_url: args
                        .public_url
                        .map(|u| format!("{}/v1/rejoin", u.trim_end_matches('/'))),
                    ..Settings::default()
                },
            };
            tokio::runtime::Runtime::new()?
                .block_on(run(opts))
                .context("operator stopped")?;
        }
        Cmd::Crdgen { dir } => {
            let crds = moim_operator::crd::crds_yaml()?;
            if let Some(dir) = dir {
                std::fs::create_dir_all(&dir)?;
                for (file, yaml) in crds {
                    let path = dir.join(file);
                    std::fs::write(&path, yaml)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            for (i, (_, yaml)) in crds.into_iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{yaml}")?;
            }
        }
    }
    Ok(())
}
