//! Child processes `vsr run` starts and stops (Envoy now; the inference sidecar later):
//! output to a log file, a clean SIGTERM-then-kill stop, and the log's tail when a
//! process dies on its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub struct Supervised {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `cmd` with stdout and stderr going to `log` (truncated). The child gets its
    /// own process group so a terminal's Ctrl-C reaches only `vsr`, which then stops it.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Supervised {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Resolves when the process exits.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(pid) = self.child.id() else {
            return Ok(()); // already reaped
        };
        let pid = Pid::from_raw(i32::try_from(pid)?);
        if kill(pid, Signal::SIGTERM).is_ok()
            && tokio::time::timeout(grace, self.child.wait()).await.is_ok()
        {
            return Ok(());
        }
        eprintln!(
            "vsr: {} did not stop within {grace:?}; killing it",
            self.name
        );
        self.child.kill().await?;
        Ok(())
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A bare HTTP/1.1 GET (Envoy refuses HTTP/1.0), enough for readiness probes: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls Envoy's admin `/ready` until it answers `LIVE`; fails if Envoy exits or `timeout` passes.
pub async fn wait_envoy_ready(
    envoy: &mut Supervised,
    admin: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<()> {
    let poll = async {
        loop {
            if let Ok((200, body)) = http_get(admin, "/ready").await {
                // The body is chunked: `5\r\nLIVE\n\r\n0\r\n\r\n`.
                if body.lines().any(|l| l.trim() == "LIVE") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = poll => Ok(()),
        status = envoy.exited() => bail!("envoy exited during startup ({}); last log lines:\n{}", describe(status), envoy.log_tail(40)),
        _ = tokio::time::sleep(timeout) => bail!(
            "envoy was not ready after {timeout:?} (admin {admin}/ready); last log lines:\n{}",
            envoy.log_tail(40)
        ),
    }
}

pub fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}
