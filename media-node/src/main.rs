//! The `media-node` binary: serve, mint a join token, or drain the node on this machine.

use anyhow::{Context, bail};
use clap::Parser;
use media_node::config::{Cli, Command, DEV_SECRET};
use moim_wire::JoinClaims;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(t)) => {
            let secret = match (t.dev, t.token_secret) {
                (_, Some(s)) => s,
                (true, None) => DEV_SECRET.to_owned(),
                (false, None) => bail!("give --dev or --token-secret (MOIM_TOKEN_SECRET)"),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("clock before 1970")?
                .as_secs();
            let claims = JoinClaims {
                identity: t.identity,
                room: t.room,
                name: t.name,
                can_publish: !t.no_publish,
                can_subscribe: !t.no_subscribe,
                can_chat: t.chat,
                exp: now + t.ttl.as_secs(),
                nbf: None,
            };
            println!("{}", claims.sign(secret.as_bytes()));
            Ok(())
        }
        Some(Command::Drain(d)) => media_node::drain::run(&d),
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(media_node::serve::serve(cli.serve))
        }
    }
}
