//! Dynamic batching under concurrency: every caller gets its own result;
//! overload is refused at once; callers that leave are dropped from the
//! queue; shutdown drains in-flight work.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use std::time::Duration;

use inference_server::sidecar::tasks::TaskKind;
use sidecar_common::*;
use tonic::Code;
use vsr_proto::v1 as pb;

fn text(i: usize) -> String {
    // Mixed lengths: 3 .. ~200 tokens.
    let words = [
        "router", "math", "integral", "python", "bread", "email", "gpu", "kernel", "llama", "proxy",
    ];
    let n = 1 + (i * 37) % 150;
    (0..n)
        .map(|j| words[(i + j * 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" {i}")
}

fn tasks_for(i: usize) -> Vec<String> {
    match i % 4 {
        0 => vec!["embedding".into()],
        1 => vec!["domain".into()],
        2 => vec!["pii".into(), "embedding".into()],
        _ => vec!["domain".into(), "pii".into(), "embedding".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_requests_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    random_task(
        dir.path(),
        "domain",
        TaskKind::Sequence,
        &["a", "b", "c", "d"],
        1,
        Some(8),
    );
    random_task(
        dir.path(),
        "pii",
        TaskKind::Token,
        &["O", "B-X", "I-X"],
        1,
        Some(4),
    );
    let s = start(config(dir.path())).await;
    let c = client(&s).await;
    let n = 48;
    // Reference: one request at a time.
    let mut refs = Vec::new();
    for i in 0..n {
        let r = c
            .clone()
            .classify(pb::ClassifyRequest {
                text: text(i),
                tasks: tasks_for(i),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        refs.push(r);
    }
    // All at once: they get batched together (padded to different lengths,
    // different task sets per row).
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                c.classify(pb::ClassifyRequest {
                    text: text(i),
                    tasks: tasks_for(i),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let got = h.await.unwrap().unwrap();
        let want = &refs[i];
        assert_eq!(got.input, want.input, "request {i}");
        assert_eq!(got.results.len(), want.results.len(), "request {i}");
        match (&got.embedding, &want.embedding) {
            (Some(a), Some(b)) => assert!(
                max_abs_diff(&a.values, &b.values) < 1e-4,
                "request {i} embedding"
            ),
            (None, None) => {}
            _ => panic!("request {i}: embedding presence differs"),
        }
        for (a, b) in got.results.iter().zip(&want.results) {
            assert_eq!(a.task, b.task);
            match (&a.output, &b.output) {
                (
                    Some(pb::task_result::Output::Sequence(x)),
                    Some(pb::task_result::Output::Sequence(y)),
                ) => {
                    for (p, q) in x.scores.iter().zip(&y.scores) {
                        assert!(
                            (p.score - q.score).abs() < 1e-4,
                            "request {i} task {}",
                            a.task
                        );
                    }
                }
                (
                    Some(pb::task_result::Output::Tokens(x)),
                    Some(pb::task_result::Output::Tokens(y)),
                ) => {
                    let spans = |t: &pb::TokenClassification| {
                        t.entities
                            .iter()
                            .map(|e| (e.start, e.end, e.r#type.clone()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(spans(x), spans(y), "request {i} pii spans");
                }
                other => panic!("request {i}: mismatched outputs {other:?}"),
            }
        }
    }
    // Batching actually happened: some forward pass had more than one row.
    let (_, metrics) = http_client::request(s.http_addr, "GET", "/metrics", None).await;
    let one_row: f64 = metric(&metrics, "vsr_batch_size_bucket{le=\"1\"}");
    let passes: f64 = metric(&metrics, "vsr_batch_size_count");
    assert!(
        passes > one_row,
        "no multi-row batch: {passes} passes, {one_row} of one row"
    );
    s.shutdown().await.unwrap();
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

/// About 8k tokens (32 x 250): keeps the backend busy for a second or more
/// on a 2-core CPU.
fn long_batch() -> pb::EmbedRequest {
    pb::EmbedRequest {
        texts: (0..32)
            .map(|i| format!("{} {i}", "tokens and more tokens ".repeat(62)))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_concurrent_requests = 2;
    let s = start(cfg).await;
    let c = client(&s).await;
    // Occupy both permits with slow calls.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.embed(long_batch()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    let e = c
        .clone()
        .embed(pb::EmbedRequest {
            texts: vec!["hello".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        t.elapsed()
    );
    let (status, body) = http_client::post_json(
        s.http_addr,
        "/v1/embeddings",
        &serde_json::json!({"input": "hello"}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limit_error"));
    for b in busy {
        b.await.unwrap().unwrap();
    }
    // Capacity is back.
    c.clone()
        .embed(pb::EmbedRequest {
            texts: vec!["hello".into()],
        })
        .await
        .unwrap();
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_that_leave_are_dropped_before_compute() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let c = client(&s).await;
    let mut busy_client = c.clone();
    let busy = tokio::spawn(async move { busy_client.embed(long_batch()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // These queue behind the busy batch, then give up.
    for i in 0..5 {
        let mut c = c.clone();
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            c.embed(pb::EmbedRequest {
                texts: vec![format!("left {i}")],
            }),
        )
        .await;
        assert!(r.is_err(), "call {i} should still be queued");
    }
    busy.await.unwrap().unwrap();
    c.clone()
        .embed(pb::EmbedRequest {
            texts: vec!["after".into()],
        })
        .await
        .unwrap();
    let (_, metrics) = http_client::request(s.http_addr, "GET", "/metrics", None).await;
    assert_eq!(metric(&metrics, "vsr_cancelled_total"), 5.0);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_calls() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let grpc_addr = s.grpc_addr;
    let mut c = client(&s).await;
    let inflight = tokio::spawn(async move { c.embed(long_batch()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.shutdown().await.unwrap();
    let r = inflight.await.unwrap().unwrap().into_inner();
    assert_eq!(r.embeddings.len(), 32);
    assert!(
        tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .is_err(),
        "still accepting after shutdown"
    );
}
