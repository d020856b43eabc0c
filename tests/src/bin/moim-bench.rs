//! `moim-bench`: moim's benchmark programs. Figures are printed as a table; with `--json` the
//! last line is one JSON object holding them.
//!
//! Run with `cargo run --release -p moim-e2e --bin moim-bench -- sfu`; a release bench builds
//! and starts a release media-node.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "moim benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// One media-node on one core: CPU per forwarded packet, most subscribers of one 720p
    /// simulcast publisher below 1% loss, and join times; `--vs janus,livekit` runs the same
    /// load on Janus and/or LiveKit on the same core and prints the ratios.
    Sfu(moim_e2e::sfu_bench::SfuArgs),
    /// The operator: placement decision time, reconciles per second against a mocked API
    /// server, and memory, for 10,000 meetings on 300 nodes in 5 regions.
    Placement(moim_e2e::placement_bench::PlacementArgs),
    /// Two linked media-nodes: latency added per relay hop, relay packets per core-second,
    /// and the link's wire overhead over the media it carries.
    Cascade(moim_e2e::cascade_bench::CascadeArgs),
    /// The operator on a real Kubernetes control plane: start-up, `kubectl apply` to Running,
    /// reconciles per second and memory with many meetings on real media pods.
    Kube(moim_e2e::kube_bench::KubeArgs),
    /// The autoscaler: a traffic curve (steady, surge, webinar, follow-the-sun) replayed
    /// through the real scaling and placement decisions on a simulated fleet.
    Autoscale(moim_e2e::autoscale_bench::AutoscaleArgs),
    /// Recovery from failures with real processes and Chromium: a dead media node, a dead
    /// cascade hub, a changed network; p50/p99 from the fault to fresh frames on both sides.
    Failover(moim_e2e::failover::FailoverArgs),
    /// A large meeting on one media node: CPU and egress with every tile shown, with one page
    /// shown (the rest paused at the node), and with last-N.
    Room(moim_e2e::room_bench::RoomArgs),
    /// A webinar of 1,000 viewers over three linked nodes (two in the host's region, one
    /// remote): viewer join times and CPU per node.
    Webinar(moim_e2e::webinar_bench::WebinarArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.bench {
        Bench::Sfu(args) => {
            let out = moim_e2e::sfu_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Webinar(args) => {
            let out = moim_e2e::webinar_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Room(args) => {
            let out = moim_e2e::room_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Cascade(args) => {
            let out = moim_e2e::cascade_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Autoscale(args) => {
            let out = moim_e2e::autoscale_bench::run(&args)?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Kube(args) => {
            // Its own runtime with worker threads: the test kubelet's tasks run while the
            // bench waits on helm and kubectl.
            let json = args.json;
            let out = std::thread::spawn(move || -> anyhow::Result<serde_json::Value> {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?
                    .block_on(moim_e2e::kube_bench::run(&args))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the kube bench panicked"))??;
            if json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Failover(args) => {
            let out = moim_e2e::failover::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Placement(args) => {
            let out = moim_e2e::placement_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
    }
}
