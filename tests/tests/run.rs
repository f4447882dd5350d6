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
