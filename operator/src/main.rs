//! The `operator` binary: `operator crdgen` prints every CRD (or writes them to a folder).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "moim operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print every CustomResourceDefinition as YAML (what `crds/` holds).
    Crdgen {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
