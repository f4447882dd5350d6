//! The tonic gRPC server: `vsr.inference.v1.Inference`, plus
//! `grpc.health.v1` and server reflection. `From<InferError> for Status` is
//! the only place engine errors become gRPC statuses.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use vsr_proto::v1 as pb;
use vsr_proto::v1::inference_server::{Inference, InferenceServer};

use crate::sidecar::cache::{Cache, Lookup, Stored};
use crate::sidecar::error::InferError;
use crate::sidecar::infer::{ClassifyRequest, ExtraText, Infer, InputInfo, TaskOutput, Timing};
use crate::sidecar::tasks::decode::{Entity, SequenceResult, TokenLabel};

impl From<InferError> for Status {
    fn from(e: InferError) -> Self {
        let msg = e.to_string();
        match e {
            InferError::EmptyInput { .. }
            | InferError::InvalidArgument { .. }
            | InferError::UnknownTask(_)
            | InferError::WrongKind { .. } => Status::invalid_argument(msg),
            InferError::MissingHead { .. } => Status::failed_precondition(msg),
            InferError::Unimplemented { .. } => Status::unimplemented(msg),
            InferError::UnknownCandidateSet(_) => Status::not_found(msg),
            InferError::TooLarge { .. } | InferError::Overloaded => Status::resource_exhausted(msg),
            InferError::ShuttingDown => Status::unavailable(msg),
            InferError::Tokenize(_) | InferError::Backend(_) => Status::internal(msg),
        }
    }
}

/// The tonic service over the engine and the semantic cache.
pub struct GrpcService {
    infer: Infer,
    cache: Cache,
}

impl GrpcService {
    /// The service with message size limits (larger is RESOURCE_EXHAUSTED).
    pub fn server(
        infer: Infer,
        cache: Cache,
        max_message_bytes: usize,
    ) -> InferenceServer<GrpcService> {
        InferenceServer::new(GrpcService { infer, cache })
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn timing_pb(t: &Timing) -> pb::Timing {
    pb::Timing {
        queue_us: us(t.queue),
        tokenize_us: us(t.tokenize),
        inference_us: us(t.inference),
        total_us: us(t.total),
    }
}

/// Wraps a reply, copying its timing into response metadata.
fn reply<T>(msg: T, t: &Timing) -> Response<T> {
    let mut r = Response::new(msg);
    let md = r.metadata_mut();
    md.insert("x-queue-time-us", MetadataValue::from(us(t.queue)));
    md.insert("x-tokenize-time-us", MetadataValue::from(us(t.tokenize)));
    md.insert("x-inference-time-us", MetadataValue::from(us(t.inference)));
    md.insert("x-total-time-us", MetadataValue::from(us(t.total)));
    r
}

fn input_pb(i: &InputInfo) -> pb::InputInfo {
    pb::InputInfo {
        tokens: i.tokens as u32,
        truncated: i.truncated,
    }
}

fn sequence_pb(r: SequenceResult) -> pb::SequenceClassification {
    pb::SequenceClassification {
        label: r.label,
        confidence: r.confidence,
        scores: r
            .scores
            .into_iter()
            .map(|(label, score)| pb::LabelScore { label, score })
            .collect(),
    }
}

fn entity_pb(e: Entity) -> pb::EntitySpan {
    pb::EntitySpan {
        r#type: e.kind,
        start: e.start as u32,
        end: e.end as u32,
        score: e.score,
        byte_start: e.byte_start as u32,
        byte_end: e.byte_end as u32,
        source: e.source.to_string(),
    }
}

fn results_pb(results: Vec<(String, TaskOutput)>) -> Vec<pb::TaskResult> {
    results
        .into_iter()
        .map(|(task, o)| pb::TaskResult {
            task,
            output: Some(match o {
                TaskOutput::Sequence(s) => pb::task_result::Output::Sequence(sequence_pb(s)),
                TaskOutput::Entities(es) => {
                    pb::task_result::Output::Tokens(pb::TokenClassification {
                        entities: es.into_iter().map(entity_pb).collect(),
                    })
                }
            }),
        })
        .collect()
}

fn token_pb(t: TokenLabel) -> pb::TokenLabel {
    pb::TokenLabel {
        start: t.start as u32,
        end: t.end as u32,
        label: t.label,
        score: t.score,
        byte_start: t.byte_start as u32,
        byte_end: t.byte_end as u32,
    }
}

#[tonic::async_trait]
impl Inference for GrpcService {
    #[tracing::instrument(skip_all, fields(tasks = ?request.get_ref().tasks, extra_texts = request.get_ref().extra_texts.len()))]
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .infer
            .classify(ClassifyRequest {
                text: r.text,
                tasks: r.tasks,
                candidate_sets: r.candidate_sets,
                top_k: r.top_k as usize,
                extra_texts: r
                    .extra_texts
                    .into_iter()
                    .map(|x| ExtraText {
                        text: x.text,
                        tasks: x.tasks,
                    })
                    .collect(),
            })
            .await?;
        let msg = pb::ClassifyResponse {
            results: results_pb(out.results),
            embedding: out.embedding.map(|values| pb::Embedding {
                values,
                input: Some(input_pb(&out.input)),
            }),
            similarities: out
                .similarities
                .into_iter()
                .map(|(set, scores)| pb::SimilarityResult {
                    set,
                    scores: scores
                        .into_iter()
                        .map(|c| pb::CandidateScore {
                            id: c.id,
                            index: c.index as u32,
                            score: c.score,
                        })
                        .collect(),
                })
                .collect(),
            input: Some(input_pb(&out.input)),
            timing: Some(timing_pb(&out.timing)),
            extra_results: out
                .extra_results
                .into_iter()
                .map(|x| pb::ExtraResult {
                    results: results_pb(x.results),
                    input: Some(input_pb(&x.input)),
                })
                .collect(),
        };
        Ok(reply(msg, &out.timing))
    }

    #[tracing::instrument(skip_all, fields(texts = request.get_ref().texts.len()))]
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let out = self.infer.embed(request.into_inner().texts).await?;
        let msg = pb::EmbedResponse {
            embeddings: out
                .embeddings
                .into_iter()
                .map(|(values, i)| pb::Embedding {
                    values,
                    input: Some(input_pb(&i)),
                })
                .collect(),
            timing: Some(timing_pb(&out.timing)),
        };
        Ok(reply(msg, &out.timing))
    }

    #[tracing::instrument(skip_all, fields(sets = request.get_ref().sets.len()))]
    async fn register_candidates(
        &self,
        request: Request<pb::RegisterCandidatesRequest>,
    ) -> Result<Response<pb::RegisterCandidatesResponse>, Status> {
        let sets = request
            .into_inner()
            .sets
            .into_iter()
            .map(|s| {
                (
                    s.name,
                    s.candidates.into_iter().map(|c| (c.id, c.text)).collect(),
                )
            })
            .collect();
        let (registered, t) = self.infer.register_candidates(sets).await?;
        let msg = pb::RegisterCandidatesResponse {
            sets: registered
                .into_iter()
                .map(|s| pb::RegisteredSet {
                    name: s.name,
                    count: s.count as u32,
                    dimension: s.dimension as u32,
                })
                .collect(),
            timing: Some(timing_pb(&t)),
        };
        Ok(reply(msg, &t))
    }

    #[tracing::instrument(skip_all, fields(pairs = request.get_ref().pairs.len()))]
    async fn nli(
        &self,
        request: Request<pb::NliRequest>,
    ) -> Result<Response<pb::NliResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .infer
            .nli(
                Some(r.task),
                r.pairs
                    .into_iter()
                    .map(|p| (p.premise, p.hypothesis))
                    .collect(),
            )
            .await?;
        let msg = pb::NliResponse {
            results: out.results.into_iter().map(sequence_pb).collect(),
            timing: Some(timing_pb(&out.timing)),
        };
        Ok(reply(msg, &out.timing))
    }

    #[tracing::instrument(skip_all, fields(inputs = request.get_ref().inputs.len()))]
    async fn classify_tokens(
        &self,
        request: Request<pb::ClassifyTokensRequest>,
    ) -> Result<Response<pb::ClassifyTokensResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .infer
            .classify_tokens(
                Some(r.task),
                r.inputs
                    .into_iter()
                    .map(|p| (p.context, p.answer))
                    .collect(),
            )
            .await?;
        let msg = pb::ClassifyTokensResponse {
            results: out
                .results
                .into_iter()
                .map(|(tokens, windows)| pb::TokenLabels {
                    tokens: tokens.into_iter().map(token_pb).collect(),
                    windows: windows as u32,
                })
                .collect(),
            timing: Some(timing_pb(&out.timing)),
        };
        Ok(reply(msg, &out.timing))
    }

    #[tracing::instrument(skip_all, fields(partition_bytes = request.get_ref().partition.len()))]
    async fn cache_lookup(
        &self,
        request: Request<pb::CacheLookupRequest>,
    ) -> Result<Response<pb::CacheLookupResponse>, Status> {
        let r = request.into_inner();
        let (out, took) = self
            .cache
            .lookup(&r.partition, r.embedding, r.similarity_threshold)
            .await?;
        let t = Timing {
            total: took,
            ..Timing::default()
        };
        let (hit, response, similarity, bypass_reason) = match out {
            Lookup::Hit {
                response,
                similarity,
            } => (true, response.to_vec(), similarity, String::new()),
            Lookup::Miss { similarity } => (false, Vec::new(), similarity, String::new()),
            Lookup::Bypass { reason } => (false, Vec::new(), 0.0, reason.to_string()),
        };
        let msg = pb::CacheLookupResponse {
            hit,
            response,
            similarity,
            bypass_reason,
            timing: Some(timing_pb(&t)),
        };
        Ok(reply(msg, &t))
    }

    #[tracing::instrument(skip_all, fields(partition_bytes = request.get_ref().partition.len()))]
    async fn cache_store(
        &self,
        request: Request<pb::CacheStoreRequest>,
    ) -> Result<Response<pb::CacheStoreResponse>, Status> {
        let r = request.into_inner();
        let (out, took) = self
            .cache
            .store(&r.partition, r.embedding, r.response, r.ttl_seconds)
            .await?;
        let t = Timing {
            total: took,
            ..Timing::default()
        };
        let (stored, bypass_reason) = match out {
            Stored::Stored => (true, String::new()),
            Stored::Bypass { reason } => (false, reason.to_string()),
        };
        let msg = pb::CacheStoreResponse {
            stored,
            bypass_reason,
            timing: Some(timing_pb(&t)),
        };
        Ok(reply(msg, &t))
    }
}
