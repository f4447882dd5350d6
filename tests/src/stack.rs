//! One router under test: a config template made concrete with free ports, a `vsr mock-llm`
//! per backend it names, the bootstrap from `vsr render`, and Envoy running it.
//!
//! Templates use `@LISTENER_PORT@` for the listener port, `@MOCK:name@` for
//! `127.0.0.1:<port>` of a mock backend called `name` (one process per distinct name) and
//! `@SIDECAR@` for the address of the inference sidecar the caller started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Reply};
use crate::{free_port, paths, wait_until, Proc};

pub struct Stack {
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    pub bootstrap_path: PathBuf,
    /// Mock backend name → port.
    pub mocks: BTreeMap<String, u16>,
    envoy: Proc,
    _mock_procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

/// Fills `@LISTENER_PORT@` and every `@MOCK:name@`; returns the text and the mock ports.
pub fn instantiate(template: &str, listener_port: u16) -> (String, BTreeMap<String, u16>) {
    let mut mocks = BTreeMap::new();
    let mut out = template.replace("@LISTENER_PORT@", &listener_port.to_string());
    while let Some(start) = out.find("@MOCK:") {
        let end = start
            + out[start + 1..]
                .find('@')
                .expect("unterminated @MOCK:name@")
            + 1;
        let name = out[start + 6..end].to_string();
        let port = *mocks.entry(name).or_insert_with(free_port);
        out.replace_range(start..=end, &format!("127.0.0.1:{port}"));
    }
    (out, mocks)
}

/// Runs `vsr` with `args`; (success, stdout, stderr).
pub fn vsr(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(paths::vsr())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run vsr");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Stack {
    /// Starts everything for `template`; `env` goes to Envoy (and `vsr render`, which
    /// checks `${VAR}` access keys the same way the filter will).
    pub fn start(template: &str, env: &[(&str, &str)]) -> Stack {
        Stack::start_with_sidecar(template, env, None)
    }

    /// Like [`Stack::start`], with `@SIDECAR@` replaced by `sidecar` (`host:port`).
    pub fn start_with_sidecar(
        template: &str,
        env: &[(&str, &str)],
        sidecar: Option<&str>,
    ) -> Stack {
        Stack::start_edited(template, env, sidecar, |bootstrap| bootstrap)
    }

    /// Like [`Stack::start_with_sidecar`], with `edit` applied to the bootstrap `vsr render`
    /// wrote before Envoy reads it (e.g. a benchmark's extra listener).
    pub fn start_edited(
        template: &str,
        env: &[(&str, &str)],
        sidecar: Option<&str>,
        edit: impl FnOnce(String) -> String,
    ) -> Stack {
        let (vsr, envoy, wasm) = (paths::vsr(), paths::envoy(), paths::wasm());
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let admin_port = free_port();
        let template = match sidecar {
            Some(addr) => template.replace("@SIDECAR@", addr),
            None => template.to_string(),
        };
        let (config, mocks) = instantiate(&template, port);
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &config).expect("write config");

        let mock_procs: Vec<Proc> = mocks
            .iter()
            .map(|(name, p)| {
                let log = dir.path().join(format!("mock-{name}.log"));
                Proc::spawn(
                    &format!("mock {name}"),
                    &vsr,
                    &["mock-llm", "--port", &p.to_string(), "--name", name],
                    &[],
                    &log,
                )
            })
            .collect();

        let (ok, yaml, err) = vsr_render(&config_path, &wasm, admin_port, env);
        assert!(ok, "vsr render failed:\n{err}\nconfig:\n{config}");
        let bootstrap_path = dir.path().join("envoy.yaml");
        std::fs::write(&bootstrap_path, edit(yaml)).expect("write bootstrap");

        let envoy = Proc::spawn(
            "envoy",
            &envoy,
            &[
                "-c",
                &bootstrap_path.to_string_lossy(),
                "--concurrency",
                "2",
                "--log-level",
                "warn",
                "--disable-hot-restart",
            ],
            env,
            &dir.path().join("envoy.log"),
        );
        let mut stack = Stack {
            port,
            admin_port,
            config_path,
            bootstrap_path,
            mocks,
            envoy,
            _mock_procs: mock_procs,
            _dir: dir,
        };
        stack.wait_ready();
        stack
    }

    fn wait_ready(&mut self) {
        for (name, port) in &self.mocks {
            let url = format!("http://127.0.0.1:{port}/health");
            let up = wait_until(Duration::from_secs(15), || {
                std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
                    && http::get(&url).status == 200
            });
            assert!(up, "mock {name} did not come up on port {port}");
        }
        let admin_port = self.admin_port;
        let live = || {
            std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok() && {
                let r = http::get(&format!("http://127.0.0.1:{admin_port}/ready"));
                r.status == 200 && r.body.trim() == "LIVE"
            }
        };
        wait_until(Duration::from_secs(30), || {
            self.envoy.exited().is_some() || live()
        });
        assert!(
            self.envoy.exited().is_none() && live(),
            "envoy did not become ready\n{}",
            self.envoy.log_tail(40)
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs a chat completion body with extra headers.
    pub fn chat_with(&self, headers: &[(&str, &str)], body: &Value) -> Reply {
        http::post(
            &self.url("/v1/chat/completions"),
            headers,
            body.to_string().as_bytes(),
        )
    }

    pub fn chat(&self, body: &Value) -> Reply {
        self.chat_with(&[], body)
    }

    /// An auto-routed request with one user message.
    pub fn ask(&self, text: &str) -> Reply {
        self.chat(
            &serde_json::json!({"model": "MoM", "messages": [{"role": "user", "content": text}]}),
        )
    }

    /// Envoy's output so far, for assertions on what it logged.
    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }
}

/// `vsr render` for `config`; (success, stdout, stderr).
pub fn vsr_render(
    config: &Path,
    wasm: &Path,
    admin_port: u16,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    vsr(
        &[
            "render",
            "--config",
            &config.to_string_lossy(),
            "--wasm",
            &wasm.to_string_lossy(),
            "--admin-port",
            &admin_port.to_string(),
        ],
        env,
    )
}
