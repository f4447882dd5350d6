//! The real inference sidecar (`vsr serve`) with the shipped models under `models/`, and
//! a real `redis-server`, as processes the tests can stop and start again.

use std::path::PathBuf;
use std::time::Duration;

use crate::{free_port, http, paths, wait_until, Proc};

pub struct Sidecar {
    pub grpc_port: u16,
    pub http_port: u16,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Sidecar {
    /// Starts `vsr serve` on free ports with the project's base model and `models/`,
    /// plus `extra` flags (e.g. `--cache-backend redis`). Waits until it is healthy.
    pub fn start(dir: &std::path::Path, extra: &[&str]) -> Sidecar {
        let root = paths::root();
        let grpc_port = free_port();
        let http_port = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--grpc-port".into(),
            grpc_port.to_string(),
            "--http-port".into(),
            http_port.to_string(),
            "--models".into(),
            root.join("models").display().to_string(),
            "--base-model".into(),
            root.join("models/base/all-MiniLM-L6-v2")
                .display()
                .to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Sidecar {
            grpc_port,
            http_port,
            args,
            log: dir.join(format!("sidecar-{grpc_port}.log")),
            proc: None,
        };
        s.resume();
        s
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Kills it (SIGTERM); the ports stay reserved for [`Sidecar::resume`].
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Starts it again on the same ports and waits until healthy.
    pub fn resume(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn("sidecar", &paths::vsr(), &args, &[], &self.log);
        let url = format!("http://127.0.0.1:{}/health", self.http_port);
        let up = wait_until(Duration::from_secs(120), || {
            proc.exited().is_none()
                && std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
                && http::get(&url).status == 200
        });
        assert!(
            up,
            "the sidecar did not become healthy:\n{}",
            proc.log_tail(40)
        );
        self.proc = Some(proc);
    }

    /// Prometheus text from `/metrics`.
    pub fn metrics(&self) -> String {
        http::get(&format!("http://127.0.0.1:{}/metrics", self.http_port)).body
    }
}

pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Redis {
    /// A throw-away `redis-server` (no persistence) on a free port.
    pub fn start(dir: &std::path::Path) -> Redis {
        let port = free_port();
        let mut r = Redis {
            port,
            proc: None,
            log: dir.join(format!("redis-{port}.log")),
        };
        r.resume();
        r
    }

    pub fn resume(&mut self) {
        let bin = which("redis-server")
            .expect("redis-server is not installed: run `bash scripts/setup.sh`");
        let port = self.port.to_string();
        let mut proc = Proc::spawn(
            "redis",
            &bin,
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            &[],
            &self.log,
        );
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(
            up && proc.exited().is_none(),
            "redis did not start:\n{}",
            proc.log_tail(20)
        );
        self.proc = Some(proc);
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Envoy with the filter and a real sidecar on the shipped models, kept
/// together so the sidecar and its scratch folder live as long as the stack
/// (tests keep one in a `static`).
pub struct SidecarStack {
    pub stack: crate::Stack,
    _sidecar: Sidecar,
    _dir: tempfile::TempDir,
}

impl SidecarStack {
    /// Starts the sidecar, then the stack from `template` pointed at it.
    pub fn start(template: &str) -> SidecarStack {
        let dir = tempfile::tempdir().expect("temp dir");
        let sidecar = Sidecar::start(dir.path(), &[]);
        let stack = crate::Stack::start_with_sidecar(template, &[], Some(&sidecar.address()));
        SidecarStack {
            stack,
            _sidecar: sidecar,
            _dir: dir,
        }
    }
}
