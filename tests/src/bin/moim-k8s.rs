//! `moim-k8s`: a real Kubernetes control plane on this machine for a contributor, the one the
//! tests use (etcd, kube-apiserver with RBAC, kube-controller-manager, Nodes played by the
//! test kubelet). Build it once with `tests/k8s/build.sh`, then
//!
//! ```sh
//! cargo run -p moim-e2e --bin moim-k8s -- --regions seoul,frankfurt
//! ```
//!
//! prints the admin kubeconfig; `kubectl --kubeconfig <it> get nodes` works until Ctrl-C.

use clap::Parser;
use moim_e2e::k8s::{Cluster, ControlPlane, ControlPlaneOptions, FakeNode};

/// Starts a test control plane and waits for Ctrl-C.
#[derive(Parser)]
#[command(about = "Run moim's test Kubernetes control plane until Ctrl-C")]
struct Args {
    /// Regions, one Node each (`seoul-node-0`, …); empty runs the control plane alone, with no
    /// Nodes and no pod network (needs no root).
    #[arg(long, value_delimiter = ',', default_value = "seoul,frankfurt")]
    regions: Vec<String>,
    /// Nodes per region.
    #[arg(long, default_value_t = 1)]
    nodes_per_region: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let regions: Vec<String> = args.regions.into_iter().filter(|r| !r.is_empty()).collect();
    let (_cluster, _cp, kubeconfig, startup) = if regions.is_empty() {
        let cp = ControlPlane::start(ControlPlaneOptions::default()).await?;
        let (k, s) = (cp.kubeconfig.clone(), cp.startup);
        (None, Some(cp), k, s)
    } else {
        let nodes: Vec<FakeNode> = regions
            .iter()
            .flat_map(|r| {
                (0..args.nodes_per_region).map(move |i| FakeNode::new(&format!("{r}-node-{i}"), r))
            })
            .collect();
        let c = Cluster::start(&nodes).await?;
        let (k, s) = (c.control_plane.kubeconfig.clone(), c.control_plane.startup);
        (Some(c), None, k, s)
    };
    println!("control plane ready in {:.1} s", startup.as_secs_f64());
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("Ctrl-C stops it and removes everything it made.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
