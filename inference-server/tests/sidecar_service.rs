//! The gRPC and HTTP surface: multi-task Classify (random-weight heads in a
//! temp dir, to test the machinery, never shipped), candidates, pair tasks,
//! bad input, health, reflection, metrics.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use inference_server::sidecar::tasks::TaskKind;
use sidecar_common::*;
use tonic::Code;
use vsr_proto::v1 as pb;

const PII_LABELS: [&str; 5] = ["O", "B-EMAIL", "I-EMAIL", "B-PHONE", "I-PHONE"];

fn task_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    random_task(
        dir.path(),
        "domain",
        TaskKind::Sequence,
        &["math", "code", "other"],
        1,
        Some(8),
    );
    random_task(dir.path(), "pii", TaskKind::Token, &PII_LABELS, 1, Some(4));
    random_task(
        dir.path(),
        "nli",
        TaskKind::Pair,
        &["entailment", "neutral", "contradiction"],
        0,
        None,
    );
    random_task(
        dir.path(),
        "hallucination",
        TaskKind::PairToken,
        &["supported", "hallucinated"],
        1,
        Some(4),
    );
    random_task(
        dir.path(),
        "custom_tone",
        TaskKind::Sequence,
        &["polite", "rude"],
        0,
        None,
    );
    dir
}

fn seq(r: &pb::TaskResult) -> &pb::SequenceClassification {
    match &r.output {
        Some(pb::task_result::Output::Sequence(s)) => s,
        other => panic!("expected a sequence result, got {other:?}"),
    }
}

#[tokio::test]
async fn classify_runs_every_task_in_one_call() {
    let dir = task_dir();
    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    let text = "Contact me at bob@example.com about the integral of x^2";
    let resp = c
        .classify(pb::ClassifyRequest {
            text: text.into(),
            tasks: vec![
                "domain".into(),
                "pii".into(),
                "embedding".into(),
                "custom_tone".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.results
            .iter()
            .map(|r| r.task.as_str())
            .collect::<Vec<_>>(),
        ["domain", "pii", "custom_tone"]
    );
    let d = seq(&resp.results[0]);
    assert!(["math", "code", "other"].contains(&d.label.as_str()));
    let sum: f32 = d.scores.iter().map(|s| s.score).sum();
    assert!((sum - 1.0).abs() < 1e-4, "scores sum {sum}");
    assert_eq!(
        d.confidence,
        d.scores.iter().map(|s| s.score).fold(0.0, f32::max)
    );
    let Some(pb::task_result::Output::Tokens(pii)) = &resp.results[1].output else {
        panic!("pii is a token task")
    };
    for e in &pii.entities {
        assert!(e.start < e.end && e.end as usize <= text.chars().count());
        assert!(
            text.is_char_boundary(e.byte_start as usize)
                && text.is_char_boundary(e.byte_end as usize)
        );
        // Model spans carry the head's types; recognizer spans their own.
        assert!(
            e.source == "pattern" || PII_LABELS.iter().any(|l| l.ends_with(e.r#type.as_str())),
            "{e:?}"
        );
    }
    // The embedding rides along and equals a plain Embed of the same text.
    let emb = resp.embedding.unwrap().values;
    let plain = c
        .embed(pb::EmbedRequest {
            texts: vec![text.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(max_abs_diff(&emb, &plain.embeddings[0].values) < 1e-5);
    // Same task alone gives the same scores as in the multi-task call.
    let alone = c
        .classify(pb::ClassifyRequest {
            text: text.into(),
            tasks: vec!["domain".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let a = seq(&alone.results[0]);
    for (x, y) in a.scores.iter().zip(&d.scores) {
        assert!((x.score - y.score).abs() < 1e-5);
    }
    assert!(alone.embedding.is_none());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn candidates_are_embedded_once_and_scored() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    let set = pb::CandidateSet {
        name: "decisions".into(),
        candidates: vec![
            pb::Candidate {
                id: "math".into(),
                text: "solve equations, calculus and algebra homework".into(),
            },
            pb::Candidate {
                id: "cooking".into(),
                text: "recipes, baking bread and cooking pasta".into(),
            },
            pb::Candidate {
                id: "code".into(),
                text: "write and debug software in python or rust".into(),
            },
        ],
    };
    let r = c
        .register_candidates(pb::RegisterCandidatesRequest { sets: vec![set] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.sets[0].count, 3);
    assert_eq!(r.sets[0].dimension, 384);
    let resp = c
        .classify(pb::ClassifyRequest {
            text: "how long should I knead dough for a sourdough loaf?".into(),
            candidate_sets: vec!["decisions".into()],
            top_k: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let sim = &resp.similarities[0];
    assert_eq!(sim.set, "decisions");
    assert_eq!(sim.scores.len(), 2);
    assert_eq!(sim.scores[0].id, "cooking");
    assert!(sim.scores[0].score > sim.scores[1].score);
    assert!(resp.embedding.is_none(), "embedding only when asked for");
    // An identical text scores ~1.
    let same = c
        .classify(pb::ClassifyRequest {
            text: "write and debug software in python or rust".into(),
            candidate_sets: vec!["decisions".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.similarities[0].scores[0].id, "code");
    assert!((same.similarities[0].scores[0].score - 1.0).abs() < 1e-4);
    let err = c
        .classify(pb::ClassifyRequest {
            text: "x".into(),
            candidate_sets: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_clear_statuses() {
    let dir = task_dir();
    let mut cfg = config(dir.path());
    cfg.max_message_bytes = 64 * 1024;
    cfg.limits.max_text_bytes = 16 * 1024;
    let s = start(cfg).await;
    let mut c = client(&s).await;
    let req = |text: &str, tasks: &[&str]| pb::ClassifyRequest {
        text: text.into(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };

    let e = c.classify(req("", &["domain"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.classify(req("   ", &["domain"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.classify(req("hi", &["astrology"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("unknown task `astrology`"),
        "{}",
        e.message()
    );
    // A known task without a head: an error naming it, never an answer.
    let e = c
        .classify(req("hi", &["domain", "jailbreak"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("`jailbreak`") && e.message().contains("task.json"),
        "{}",
        e.message()
    );
    // A pair task is not served by Classify.
    let e = c.classify(req("hi", &["nli"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.classify(req("hi", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Text over the byte limit, and a message over the gRPC limit.
    let e = c
        .classify(req(&"a ".repeat(10_000), &["domain"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("exceed"), "{}", e.message());
    let e = c
        .classify(req(&"a".repeat(100_000), &["domain"]))
        .await
        .unwrap_err();
    // tonic reports an over-limit message as OUT_OF_RANGE with the sizes.
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());
    let e = c
        .embed(pb::EmbedRequest {
            texts: vec!["a".into(); 65],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .embed(pb::EmbedRequest { texts: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // HTTP: OpenAI-shaped errors with 4xx.
    let (status, body) = http_client::post_json(
        s.http_addr,
        "/v1/classify",
        &serde_json::json!({"text": "hi", "tasks": ["jailbreak"]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "missing_head");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "tasks");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("jailbreak"));
    let (status, body) = http_client::post_json(
        s.http_addr,
        "/v1/embeddings",
        &serde_json::json!({"input": ""}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_client::request(
        s.http_addr,
        "POST",
        "/v1/embeddings",
        Some("{not json".into()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""));
    let (status, body) = http_client::post_json(
        s.http_addr,
        "/v1/embeddings",
        &serde_json::json!({"input": "x".repeat(100_000)}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn pair_tasks_use_windows_and_are_unimplemented_without_heads() {
    let empty = tempfile::tempdir().unwrap();
    let s = start(config(empty.path())).await;
    let mut c = client(&s).await;
    let e = c
        .nli(pb::NliRequest {
            pairs: vec![pb::NliPair {
                premise: "a".into(),
                hypothesis: "b".into(),
            }],
            task: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("`nli`"));
    let e = c
        .classify_tokens(pb::ClassifyTokensRequest {
            inputs: vec![pb::TokenPair {
                context: "a".into(),
                answer: "b".into(),
            }],
            task: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("`hallucination`"));
    s.shutdown().await.unwrap();

    let dir = task_dir();
    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    let r = c
        .nli(pb::NliRequest {
            pairs: vec![pb::NliPair {
                premise: "A man plays guitar.".into(),
                hypothesis: "Someone makes music.".into(),
            }],
            task: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].scores.len(), 3);
    let answer = "Paris is the capital of France.";
    let context = "The city has many museums. ".repeat(200); // ~1200 tokens: several windows
    let r = c
        .classify_tokens(pb::ClassifyTokensRequest {
            inputs: vec![pb::TokenPair {
                context,
                answer: answer.into(),
            }],
            task: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = &r.results[0];
    assert!(t.windows > 1, "windows {}", t.windows);
    // paris / is / the / capital / of / france / .
    assert_eq!(
        t.tokens.len(),
        7,
        "one label per answer token: {:?}",
        t.tokens
    );
    assert_eq!(
        &answer[t.tokens[0].byte_start as usize..t.tokens[0].byte_end as usize],
        "Paris"
    );
    assert_eq!(
        &answer[t.tokens[6].byte_start as usize..t.tokens[6].byte_end as usize],
        "."
    );
    assert!(t
        .tokens
        .iter()
        .all(|l| ["supported", "hallucinated"].contains(&l.label.as_str())));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reflection_metrics_and_http_classify() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = task_dir();
    let s = start(config(dir.path())).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel.clone());
    let r = h
        .check(HealthCheckRequest {
            service: pb::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists our service.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("no list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&pb::SERVICE_NAME.to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // HTTP classify.
    let (status, body) = http_client::post_json(s.http_addr, "/v1/classify", &serde_json::json!({"text": "mail bob@example.com", "tasks": ["domain", "pii", "embedding"]})).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &v["results"]["domain"];
    assert!(d["label"].is_string() && d["confidence"].is_number());
    assert_eq!(d["scores"].as_object().unwrap().len(), 3);
    assert!(v["results"]["pii"]["entities"].is_array());
    assert_eq!(
        v["results"]["embedding"]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        384
    );

    let (status, body) = http_client::request(s.http_addr, "GET", "/health", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = http_client::request(s.http_addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for name in [
        "vsr_requests_total{method=\"classify\",status=\"ok\"}",
        "vsr_task_requests_total{status=\"ok\",task=\"domain\"}",
        "vsr_queue_duration_seconds_bucket",
        "vsr_tokenize_duration_seconds_bucket",
        "vsr_inference_duration_seconds_bucket",
        "vsr_batch_size_bucket",
        "vsr_batch_tokens_bucket",
        "vsr_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    s.shutdown().await.unwrap();
}

/// A head with `with_embedding` reads the base sentence embedding (× √h)
/// after the pooled branch output: with zero weights on the pooled half and
/// two texts' embeddings as the rows of the other half, its logits are
/// √h × cosine similarities, computed here from plain `Embed` calls.
#[tokio::test]
async fn a_head_reading_the_shared_embedding_gets_the_base_embedding() {
    let anchors = [
        "How do I compute the derivative of a polynomial?",
        "What makes a contract legally binding?",
    ];
    let texts = [
        "Integrate x squared from zero to one.",
        "Can my landlord keep the deposit if I break the lease?",
    ];
    let plain = tempfile::tempdir().unwrap();
    let s = start(config(plain.path())).await;
    let mut c = client(&s).await;
    let all: Vec<&str> = anchors.iter().chain(&texts).copied().collect();
    let emb = embed(&mut c, &all).await;
    s.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut spec = random_task(
        dir.path(),
        "topic",
        TaskKind::Sequence,
        &["calculus", "law"],
        1,
        Some(4),
    );
    spec.pooling = inference_server::sidecar::tasks::Pooling::Cls;
    spec.head.with_embedding = true;
    let task = dir.path().join("topic");
    let adapter = task.join(inference_server::sidecar::tasks::ADAPTER_FILE);
    let mut tensors = candle_core::safetensors::load(&adapter, &candle_core::Device::Cpu).unwrap();
    let rows: Vec<f32> = emb[..2]
        .iter()
        .flat_map(|e| std::iter::repeat_n(0.0, 384).chain(e.iter().copied()))
        .collect();
    tensors.insert(
        "head.out.weight".into(),
        candle_core::Tensor::from_vec(rows, (2, 768), &candle_core::Device::Cpu).unwrap(),
    );
    inference_server::sidecar::tasks::write_task(&task, &spec, &tensors).unwrap();

    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    for (i, text) in texts.iter().enumerate() {
        let resp = c
            .classify(pb::ClassifyRequest {
                text: text.to_string(),
                tasks: vec!["topic".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let t = &emb[2 + i];
        let margin = 384f32.sqrt() * (dot(t, &emb[0]) - dot(t, &emb[1]));
        let p_calculus = 1.0 / (1.0 + (-margin).exp());
        let r = seq(&resp.results[0]);
        assert_eq!(r.label, ["calculus", "law"][i], "{text}: {r:?}");
        let served = r.scores.iter().find(|s| s.label == "calculus").unwrap();
        assert!(
            (served.score - p_calculus).abs() < 1e-3,
            "{text}: served {} vs {p_calculus} from the embeddings",
            served.score
        );
    }
    s.shutdown().await.unwrap();
}
