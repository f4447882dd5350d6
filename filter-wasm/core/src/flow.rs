//! The per-request state machine the proxy-wasm shim drives. Host calls go through
//! [`HttpHost`], so the same flow runs under Envoy and under the fake host in tests.
//!
//! A paused request is always resumed or answered: every sidecar outcome (answer, gRPC
//! error, Envoy's timeout, a call that cannot even be dispatched) goes back through
//! [`Router::resume`], which either routes, answers, or calls again.

use std::rc::Rc;

use crate::openai::ApiError;
use crate::response::LocalReply;
use crate::router::{
    rpc, CacheStore, CallOutcome, HeaderOp, Pending, RoutePlan, Router, Step, ROUTING_HEADERS,
};

const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// Largest answer collected for the semantic cache; longer ones are passed on uncached.
pub const MAX_CACHED_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// What the filter asks of its host. Errors from the host are the adapter's business:
/// a missing header or body reads as `None`.
pub trait HttpHost {
    /// Every request header in one host call (names lower-case, as HTTP/2 and Envoy have them).
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (replacing) or, with `None`, removes a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn add_request_header(&mut self, name: &str, value: &str);
    fn request_body(&self, len: usize) -> Option<Vec<u8>>;
    fn replace_request_body(&mut self, body: &[u8]);
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_response_header(&mut self, name: &str, value: &str);
    /// Answers the request locally; the upstream is never called.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    fn log_debug(&self, message: &str);
    /// The current chunk of the response body (the flow never buffers the response).
    fn response_body(&self, len: usize) -> Option<Vec<u8>>;
    /// Starts a unary gRPC call to `cluster`; the answer arrives through
    /// [`RequestFlow::on_grpc_response`] with the returned token.
    fn dispatch_grpc(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32>;
    fn resume_request(&mut self);
    fn resume_response(&mut self);
    /// Unix time in milliseconds.
    fn now_unix_ms(&self) -> u64;
}

/// What the shim returns to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

#[derive(Debug, Default, PartialEq)]
enum State {
    /// Not a request the router handles: pass everything through.
    #[default]
    PassThrough,
    /// A chat completion whose body is being buffered, with the client's headers.
    BufferingChat(Vec<(String, String)>),
    /// Waiting for the sidecar's answer to call `token`.
    Calling {
        token: u32,
        pending: Pending,
        client_headers: Vec<(String, String)>,
        started_ms: u64,
    },
    /// Routed; these headers go on a 2xx response, which may be stored in the cache.
    Routed {
        headers: Vec<(&'static str, String)>,
        store: Option<CacheStore>,
    },
    /// Copying a 2xx answer (passed on as it comes) for the semantic cache.
    Collecting {
        store: CacheStore,
        sse: bool,
        body: Vec<u8>,
    },
    /// The last chunk waits until the cache has the answer: the call would be cancelled
    /// with the stream otherwise.
    Storing { token: u32 },
    /// Answered locally.
    Replied,
}

impl PartialEq for Pending {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

pub struct RequestFlow {
    router: Rc<Router>,
    state: State,
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl RequestFlow {
    pub fn new(router: Rc<Router>) -> Self {
        RequestFlow {
            router,
            state: State::PassThrough,
        }
    }

    pub fn on_request_headers(&mut self, host: &mut dyn HttpHost, end_of_stream: bool) -> Action {
        // One host call for all headers: every crossing into or out of the VM costs about
        // as much as a whole keyword scan.
        let headers = host.request_headers();
        let path = header(&headers, ":path").unwrap_or_default();
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        let method = header(&headers, ":method").unwrap_or_default();

        match (method, path) {
            ("GET", "/v1/models") => {
                let body = self.router.models_json().to_string();
                self.reply(host, 200, body.as_bytes());
                Action::Pause
            }
            ("POST", "/v1/chat/completions") => {
                let declared =
                    header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
                if declared.is_some_and(|n| n > self.router.max_body_bytes()) {
                    return self.error(host, &ApiError::too_large(self.router.max_body_bytes()));
                }
                if end_of_stream {
                    return self.error(
                        host,
                        &ApiError::invalid_request("request body is empty", None, "invalid_json"),
                    );
                }
                self.state = State::BufferingChat(headers);
                Action::Pause
            }
            _ => {
                // Route selection is the router's: a client must not pick a route by header.
                // (Routed chat requests get these overwritten in the body phase instead, which
                // spares a hostcall per header on the hot path.)
                for h in ROUTING_HEADERS {
                    if header(&headers, h).is_some() {
                        host.set_request_header(h, None);
                    }
                }
                Action::Continue
            }
        }
    }

    pub fn on_request_body(
        &mut self,
        host: &mut dyn HttpHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let State::BufferingChat(client_headers) = &self.state else {
            return Action::Continue;
        };
        if body_size > self.router.max_body_bytes() {
            return self.error(host, &ApiError::too_large(self.router.max_body_bytes()));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(body) = host.request_body(body_size) else {
            return self.error(
                host,
                &ApiError::invalid_request("request body is empty", None, "invalid_json"),
            );
        };
        let client_headers = client_headers.clone();
        let step = self.router.route(body, host.now_unix_ms() / 1000);
        self.step(host, step, client_headers, false)
    }

    /// Carries out one router step. `resumed`: the request is paused and must be resumed
    /// explicitly (we are in a gRPC callback, not in a filter callback).
    fn step(
        &mut self,
        host: &mut dyn HttpHost,
        mut step: Step,
        client_headers: Vec<(String, String)>,
        resumed: bool,
    ) -> Action {
        loop {
            match step {
                Step::Reply(reply) => {
                    self.send(host, &reply);
                    return Action::Pause;
                }
                Step::Route(plan) => {
                    self.apply(host, plan, &client_headers);
                    if resumed {
                        host.resume_request();
                    }
                    return Action::Continue;
                }
                Step::Call(call) => {
                    let token = host.dispatch_grpc(
                        self.router.sidecar_cluster(),
                        rpc::SERVICE,
                        call.method,
                        &call.message,
                        self.router.sidecar_timeout_ms(),
                    );
                    match token {
                        Some(token) => {
                            self.state = State::Calling {
                                token,
                                pending: call.pending,
                                client_headers,
                                started_ms: host.now_unix_ms(),
                            };
                            return Action::Pause;
                        }
                        None => {
                            host.log_debug("vsr: sidecar call could not be dispatched");
                            step = self.router.resume(call.pending, CallOutcome::Failed(14));
                        }
                    }
                }
            }
        }
    }

    fn apply(
        &mut self,
        host: &mut dyn HttpHost,
        plan: RoutePlan,
        client_headers: &[(String, String)],
    ) {
        for op in &plan.request_headers {
            match op {
                HeaderOp::Set(n, v) => host.set_request_header(n, Some(v)),
                HeaderOp::Add(n, v) => host.add_request_header(n, v),
                // Removing what the client never sent would be a wasted host call.
                HeaderOp::Remove(n) if header(client_headers, n).is_some() => {
                    host.set_request_header(n, None)
                }
                HeaderOp::Remove(_) => {}
            }
        }
        if let Some(new_body) = &plan.body {
            // The stale length must not reach the upstream; the new one spares it a
            // chunked body.
            host.set_request_header("content-length", Some(&new_body.len().to_string()));
            host.replace_request_body(new_body);
        }
        self.state = State::Routed {
            headers: plan.response_headers,
            store: plan.cache_store,
        };
    }

    /// The answer to a gRPC call this flow made (`body` None on failure).
    pub fn on_grpc_response(
        &mut self,
        host: &mut dyn HttpHost,
        token: u32,
        status: u32,
        body: Option<Vec<u8>>,
    ) {
        match std::mem::take(&mut self.state) {
            State::Calling {
                token: expected,
                pending,
                client_headers,
                started_ms,
            } if expected == token => {
                // Envoy reports its own call timeout as UNAVAILABLE: tell it apart by time (90%
                // of the budget: the clocks are millisecond-coarse; a refused connection fails in
                // a few milliseconds).
                let timed_out = host.now_unix_ms().saturating_sub(started_ms) * 10
                    >= self.router.sidecar_timeout_ms() * 9;
                let outcome = match (&body, status) {
                    (Some(b), 0) => CallOutcome::Ok(b),
                    (None, 0) => CallOutcome::Ok(&[]),
                    (_, _) if timed_out => CallOutcome::Failed(GRPC_DEADLINE_EXCEEDED),
                    (_, code) => CallOutcome::Failed(code),
                };
                let step = self.router.resume(pending, outcome);
                self.step(host, step, client_headers, true);
            }
            State::Storing { token: expected } if expected == token => {
                if status != 0 {
                    host.log_debug(&format!(
                        "vsr: cache store failed with gRPC status {status}"
                    ));
                }
                self.state = State::Replied;
                host.resume_response();
            }
            other => self.state = other,
        }
    }

    pub fn on_response_headers(&mut self, host: &mut dyn HttpHost) -> Action {
        if let State::Routed { headers, store } = &mut self.state {
            let status = host
                .response_header(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            if (200..300).contains(&status) {
                for (name, value) in headers.iter() {
                    host.set_response_header(name, value);
                }
                if let Some(store) = store.take() {
                    let content_type = host.response_header("content-type").unwrap_or_default();
                    let sse = content_type.starts_with("text/event-stream");
                    if sse || content_type.starts_with("application/json") {
                        self.state = State::Collecting {
                            store,
                            sse,
                            body: Vec::new(),
                        };
                    }
                }
            }
        }
        Action::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &mut dyn HttpHost,
        chunk_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let State::Collecting { store, sse, body } = &mut self.state else {
            return Action::Continue;
        };
        if chunk_size > 0 {
            if let Some(chunk) = host.response_body(chunk_size) {
                body.extend_from_slice(&chunk);
            }
        }
        if body.len() > MAX_CACHED_RESPONSE_BYTES {
            self.state = State::Replied;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Continue;
        }
        let Some(message) = Router::cache_store_message(store, body, *sse) else {
            self.state = State::Replied;
            return Action::Continue;
        };
        match host.dispatch_grpc(
            self.router.sidecar_cluster(),
            rpc::SERVICE,
            rpc::CACHE_STORE,
            &message,
            self.router.sidecar_timeout_ms(),
        ) {
            Some(token) => {
                self.state = State::Storing { token };
                Action::Pause
            }
            None => {
                self.state = State::Replied;
                Action::Continue
            }
        }
    }

    fn send(&mut self, host: &mut dyn HttpHost, reply: &LocalReply) {
        self.state = State::Replied;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        host.send_response(reply.status, &headers, &reply.body);
    }

    fn error(&mut self, host: &mut dyn HttpHost, e: &ApiError) -> Action {
        host.log_debug(&format!("rejected: {e}"));
        self.reply(host, e.status, e.body().as_bytes());
        Action::Pause
    }

    fn reply(&mut self, host: &mut dyn HttpHost, status: u32, body: &[u8]) {
        self.state = State::Replied;
        host.send_response(status, &[JSON], body);
    }
}
