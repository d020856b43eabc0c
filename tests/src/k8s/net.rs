//! A flat pod network on this machine: one Linux bridge, and a network namespace with its own
//! address on it for every Kubernetes Node and every pod that does not use the host's
//! network. Everything on the bridge, and this machine's root namespace (the bridge's
//! address), reach each other directly, as on a flat cloud VPC where pod and node addresses
//! are routable.
//!
//! Each network claims a /16 of `10.200.0.0/13` (`/tmp/moim-k8s-net/<index>` holds the
//! claimer's pid), so several test processes and several clusters in one process never share
//! addresses. A claim left by a process that died is taken over and its bridge and namespaces
//! removed first.

use anyhow::{Context as _, bail};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many networks may exist side by side on one machine.
const MAX_NETWORKS: u8 = 8;

/// Runs `ip` with `args`; an error carries what it printed.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (Debian's iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("moim-k8s-net")
}

/// One bridge and the namespaces on it.
pub struct PodNetwork {
    index: u8,
    bridge: String,
    next_host: AtomicU32,
    /// Namespaces and veths made, to remove on drop.
    hosts: Mutex<Vec<(String, String)>>,
}

/// A network namespace on the pod network: a Node's host, or one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetHost {
    /// Its `ip netns` name.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The root namespace's end of its veth pair.
    veth: String,
}

impl PodNetwork {
    /// Claims a free /16 and makes its bridge. Needs root (network namespaces).
    pub fn create() -> anyhow::Result<Self> {
        let dir = claims_dir();
        std::fs::create_dir_all(&dir)?;
        let me = std::process::id();
        for index in 0..MAX_NETWORKS {
            let claim = dir.join(index.to_string());
            let taken = std::fs::read_to_string(&claim)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| pid != me && pid_alive(pid));
            let ours = std::fs::read_to_string(&claim)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(me);
            // A second network of this process uses another index; the file lists the pid once
            // per index, so a live claim of our own is just as taken.
            if taken || (ours && Self::bridge_exists(index)) {
                continue;
            }
            std::fs::write(&claim, me.to_string())?;
            Self::remove_leftovers(index);
            let net = Self {
                index,
                bridge: format!("moimbr{index}"),
                next_host: AtomicU32::new(0),
                hosts: Mutex::new(Vec::new()),
            };
            ip(&["link", "add", &net.bridge, "type", "bridge"]).context(
                "making the pod network's bridge (the Kubernetes tests need root and network namespaces)",
            )?;
            ip(&[
                "addr",
                "add",
                &format!("{}/16", net.gateway()),
                "dev",
                &net.bridge,
            ])?;
            ip(&["link", "set", &net.bridge, "up"])?;
            return Ok(net);
        }
        bail!(
            "all {MAX_NETWORKS} pod networks are in use (see {})",
            dir.display()
        )
    }

    fn bridge_exists(index: u8) -> bool {
        std::path::Path::new(&format!("/sys/class/net/moimbr{index}")).exists()
    }

    /// Removes the bridge and namespaces a dead process left with this index.
    fn remove_leftovers(index: u8) {
        let prefix = format!("moim{index}-");
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().next()
                    && name.starts_with(&prefix)
                {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
        let veths = format!("mv{index}x");
        for link in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with(&veths) {
                let _ = ip(&["link", "del", &name]);
            }
        }
        if Self::bridge_exists(index) {
            let _ = ip(&["link", "del", &format!("moimbr{index}")]);
        }
    }

    /// The /16's second octet: 200 + index.
    fn octet(&self) -> u8 {
        200 + self.index
    }

    /// The bridge's own address: this machine's root namespace on the pod network (the API
    /// server listens here, so pods reach it).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet(), 0, 1)
    }

    /// A new namespace with its own address; `label` goes into its name (`moim0-<label>-7`).
    pub fn add_host(&self, label: &str) -> anyhow::Result<NetHost> {
        let n = self.next_host.fetch_add(1, Ordering::Relaxed);
        if n >= 250 * 250 {
            bail!("pod network {} has no addresses left", self.bridge);
        }
        let addr = Ipv4Addr::new(10, self.octet(), 1 + (n / 250) as u8, 1 + (n % 250) as u8);
        let short: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect();
        let netns = format!("moim{}-{short}-{n}", self.index);
        // Interface names are at most 15 bytes.
        let veth = format!("mv{}x{n}", self.index);
        ip(&["netns", "add", &netns])?;
        let setup = || -> anyhow::Result<()> {
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ])?;
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = ip(&["netns", "del", &netns]);
            return Err(e);
        }
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((netns.clone(), veth.clone()));
        Ok(NetHost {
            netns,
            ip: addr,
            veth,
        })
    }

    /// Removes a namespace and its veth pair. Its processes must have exited. The veth is
    /// deleted from this side: a namespace outlives its processes while the kernel still
    /// holds sockets of theirs (a TCP connection closing towards a peer that is gone), and its
    /// veth with it.
    pub fn remove_host(&self, host: &NetHost) {
        let _ = ip(&["link", "del", &host.veth]);
        let _ = ip(&["netns", "del", &host.netns]);
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| n != &host.netns);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for (netns, veth) in hosts {
            let _ = ip(&["link", "del", &veth]);
            let _ = ip(&["netns", "del", &netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_file(claims_dir().join(self.index.to_string()));
    }
}
