//! `vsr run --mock-backends`: starts Envoy and in-process mocks, serves, and stops cleanly
//! on SIGTERM (taking Envoy with it).

use std::time::Duration;

use vsr_e2e::stack::instantiate;
use vsr_e2e::{free_port, http, paths, wait_until, Proc};

#[test]
fn run_serves_with_mock_backends_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, mocks) = instantiate(include_str!("../configs/basic.yaml"), port);
    let config_path = dir.path().join("run.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let admin = free_port();

    let envoy = paths::envoy();
    let wasm = paths::wasm();
    let mut run = Proc::spawn(
        "vsr run",
        &paths::vsr(),
        &[
            "run",
            "--config",
            &config_path.to_string_lossy(),
            "--mock-backends",
            "--admin-port",
            &admin.to_string(),
            "--envoy",
            &envoy.to_string_lossy(),
            "--wasm",
            &wasm.to_string_lossy(),
        ],
        &[],
        &dir.path().join("run.log"),
    );
    let ready = wait_until(Duration::from_secs(30), || {
        run.exited().is_some() || run.log().contains("ready on http://")
    });
    assert!(
        ready && run.exited().is_none(),
        "vsr run did not get ready\n{}",
        run.log_tail(40)
    );
    for (name, p) in &mocks {
        assert!(
            run.log().contains(&format!(
                "mock backend model-{name} on http://127.0.0.1:{p}"
            )),
            "{}",
            run.log()
        );
    }

    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let r = http::post(
        &url,
        &[],
        br#"{"model":"MoM","messages":[{"role":"user","content":"an integral"}]}"#,
    );
    assert_eq!(r.echo()["backend"], "model-a", "{r:?}");
    assert_eq!(r.header("x-mock-backend"), Some("model-a"));

    let status = run
        .stop(Duration::from_secs(15))
        .expect("vsr run did not stop within 15 s");
    assert!(
        status.success(),
        "vsr run exited with {status}\n{}",
        run.log_tail(40)
    );
    assert!(run.log().contains("stopping envoy"), "{}", run.log());
    let admin_closed = wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_err()
    });
    assert!(admin_closed, "envoy is still running after vsr run exited");
}

#[test]
fn run_fails_with_envoy_log_when_envoy_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the listener's port so Envoy cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (config, _) = instantiate(include_str!("../configs/basic.yaml"), port);
    let config_path = dir.path().join("busy.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let out = std::process::Command::new(paths::vsr())
        .args([
            "run",
            "--config",
            &config_path.to_string_lossy(),
            "--ready-timeout",
            "30",
        ])
        .args([
            "--admin-port",
            &free_port().to_string(),
            "--envoy",
            &paths::envoy().to_string_lossy(),
        ])
        .args(["--wasm", &paths::wasm().to_string_lossy()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "vsr run must fail when envoy dies\n{stderr}"
    );
    assert!(
        stderr.contains("envoy exited during startup") && stderr.contains("last log lines"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&port.to_string()),
        "the log tail should name the busy address:\n{stderr}"
    );
}
