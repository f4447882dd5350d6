//! Shared helpers of the `sidecar_*` integration tests: they start the real
//! sidecar in-process (ports 0) with the real base model.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use inference_server::sidecar::backend::candle::CandleBackend;
use inference_server::sidecar::backend::{Batch, HeadOutput, SequenceOutput, TaskFiles, Wants};
use inference_server::sidecar::tasks::random::write_random_task;
use inference_server::sidecar::tasks::{HeadSpec, LoraSpec, Pooling, TaskKind, TaskSpec};
use inference_server::sidecar::tokenize::Tokenization;
use inference_server::sidecar::{Sidecar, SidecarConfig};
use tonic::transport::Channel;
use vsr_proto::v1::inference_client::InferenceClient;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A shipped head's `task.json` (parsed) and `model-card.md`; a missing head
/// FAILS (never skips).
pub fn shipped_task(task: &str) -> (serde_json::Value, String) {
    let dir = repo_root().join("models").join(task);
    let spec = std::fs::read_to_string(dir.join("task.json"))
        .unwrap_or_else(|_| panic!("models/{task}/task.json is missing: the head is not shipped"));
    let card = std::fs::read_to_string(dir.join("model-card.md"))
        .unwrap_or_else(|_| panic!("models/{task}/model-card.md is missing"));
    (serde_json::from_str(&spec).unwrap(), card)
}

/// The base model directory; a missing model FAILS (never skips).
pub fn base_model() -> PathBuf {
    let dir = repo_root().join("models/base/all-MiniLM-L6-v2");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run scripts/setup.sh to download the base model all-MiniLM-L6-v2",
            dir.join(f).display()
        );
    }
    dir
}

pub fn config(models_dir: &Path) -> SidecarConfig {
    SidecarConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        base_model: base_model().display().to_string(),
        models_dir: models_dir.to_path_buf(),
        ..SidecarConfig::default()
    }
}

pub async fn start(cfg: SidecarConfig) -> Sidecar {
    Sidecar::start(cfg).await.expect("sidecar starts")
}

pub async fn client(s: &Sidecar) -> InferenceClient<Channel> {
    InferenceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .expect("gRPC connect")
}

/// A random-weight task in `dir` (tests of the machinery only).
pub fn random_task(
    dir: &Path,
    name: &str,
    kind: TaskKind,
    labels: &[&str],
    top_layers: usize,
    lora_rank: Option<usize>,
) -> TaskSpec {
    let spec = TaskSpec {
        line_breaks: false,
        name: name.into(),
        kind,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        pooling: Pooling::Mean,
        top_layers,
        lora: lora_rank.map(|rank| LoraSpec {
            rank,
            alpha: 2.0 * rank as f64,
            targets: vec!["attention.self.query".into(), "attention.self.value".into()],
        }),
        head: HeadSpec::default(),
        members: 1,
        metadata: None,
    };
    write_random_task(dir, &spec, 384, 1536, 6).unwrap();
    spec
}

/// `Embed` over `texts`: one vector per text.
pub async fn embed(c: &mut InferenceClient<Channel>, texts: &[&str]) -> Vec<Vec<f32>> {
    c.embed(vsr_proto::v1::EmbedRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .embeddings
    .into_iter()
    .map(|e| e.values)
    .collect()
}

/// Reference embeddings: (text, expected token count, embedding).
pub fn reference() -> Vec<(String, usize, Vec<f32>)> {
    let p = repo_root().join("inference-server/tests/fixtures/minilm_reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                c["tokens"].as_u64().unwrap() as usize,
                c["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A minimal HTTP/1.1 client over a raw TCP stream (no extra dependency).
pub mod http_client {
    use std::net::SocketAddr;

    pub async fn post_json(
        addr: SocketAddr,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, String) {
        request(addr, "POST", path, Some(body.to_string())).await
    }

    pub async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.unwrap_or_default();
        let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        (status, body)
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((len, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&rest[..n]);
            s = &rest[n + 2..];
        }
        out
    }
}

/// A `Classify` request for the `pii` task alone.
pub fn pii_request(text: &str) -> vsr_proto::v1::ClassifyRequest {
    vsr_proto::v1::ClassifyRequest {
        text: text.into(),
        tasks: vec!["pii".into()],
        ..Default::default()
    }
}

/// The entity spans of a token task's result (panics on any other output).
pub fn entities(r: &vsr_proto::v1::TaskResult) -> &[vsr_proto::v1::EntitySpan] {
    match &r.output {
        Some(vsr_proto::v1::task_result::Output::Tokens(t)) => &t.entities,
        other => panic!("task {}: expected a token result, got {other:?}", r.task),
    }
}

/// One backend batch of `texts`, every row wanting the same outputs.
pub fn batch_of(tok: &Tokenization, texts: &[&str], embedding: bool, tasks: &[usize]) -> Batch {
    let wants = Wants {
        embedding,
        tasks: tasks.to_vec(),
    };
    batch_with(tok, texts, &vec![wants; texts.len()])
}

/// `texts` tokenized into one batch, row `r` wanting `wants[r]`.
pub fn batch_with(tok: &Tokenization, texts: &[&str], wants: &[Wants]) -> Batch {
    let enc: Vec<_> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    Batch::from_rows(
        enc.iter()
            .zip(wants)
            .map(|(e, w)| (&e.ids[..], &e.type_ids[..], &e.line_starts[..], w.clone())),
    )
}

/// The candle backend over the base model and the tasks `specs` (written
/// under `dir/<name>`), with a tokenizer cutting at 64 tokens.
pub fn backend_of(dir: &Path, specs: Vec<TaskSpec>) -> (CandleBackend, Tokenization) {
    let files: Vec<TaskFiles> = specs
        .into_iter()
        .map(|spec| TaskFiles {
            dir: dir.join(&spec.name),
            spec,
        })
        .collect();
    let base = base_model();
    let backend = CandleBackend::load(&base, &files, candle_core::Device::Cpu).unwrap();
    let tok = Tokenization::load(&base.join("tokenizer.json"), 64).unwrap();
    (backend, tok)
}

/// Every row's head outputs as (task id, logits), in the order the
/// backend gave them (token heads: all tokens' logits flattened).
pub fn head_logits(out: Vec<SequenceOutput>) -> Vec<Vec<(usize, Vec<f32>)>> {
    out.into_iter()
        .map(|o| {
            o.heads
                .into_iter()
                .map(|(t, h)| match h {
                    HeadOutput::Sequence(l) => (t, l),
                    HeadOutput::Tokens { logits, .. } => (t, logits),
                })
                .collect()
        })
        .collect()
}
