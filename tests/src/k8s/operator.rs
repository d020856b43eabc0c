//! The `operator` binary as a process on this machine, against a real API server, acting as
//! whatever its kubeconfig says (a ServiceAccount's token: RBAC judges every call).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `operator run`.
pub struct HostOperator {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:<port>` of its join API, metrics and probes.
    pub base: String,
}

impl HostOperator {
    /// Starts `operator run` with `kubeconfig`, secrets in files and `env` (the chart's
    /// settings), as `identity` in the leader election; waits until `/readyz` answers 200 when
    /// `wait_ready`.
    pub async fn start(
        kubeconfig: &Path,
        env: &[(String, String)],
        identity: &str,
        wait_ready: bool,
    ) -> anyhow::Result<Self> {
        let port = crate::free_tcp_port();
        let dir = std::env::temp_dir().join(format!("moim-operator-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for (file, content) in [
            ("keys", "k1\n"),
            ("token", "secret\n"),
            ("admin", "admin\n"),
        ] {
            std::fs::write(dir.join(file), content)?;
        }
        let log = dir.join("operator.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(crate::binary("operator")?)
            .arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--api-keys-file")
            .arg(dir.join("keys"))
            .arg("--token-secret-file")
            .arg(dir.join("token"))
            .arg("--admin-token-file")
            .arg(dir.join("admin"))
            .args(["--identity", identity])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut op = Self {
            child,
            dir,
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        if wait_ready {
            op.wait_ready(Duration::from_secs(30)).await?;
        }
        Ok(op)
    }

    /// Waits until `/readyz` answers 200 (it leads and its caches synced).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.base)).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                anyhow::bail!("operator exited ({st}):\n{}", self.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "operator never became ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to 15 s for the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "operator did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for HostOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
