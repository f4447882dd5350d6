//! The per-request state machine the proxy-wasm shim drives. Host calls go through
//! [`HttpHost`], so the same flow runs under Envoy and under the fake host in tests.

use std::rc::Rc;

use crate::openai::ApiError;
use crate::router::{HeaderOp, Router, ROUTING_HEADERS};

/// What the filter asks of its host. Errors from the host are the adapter's business:
/// a missing header or body reads as `None`.
pub trait HttpHost {
    fn request_header(&self, name: &str) -> Option<String>;
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
    /// A chat completion whose body is being buffered.
    BufferingChat,
    /// Routed; these headers go on a 2xx response.
    Routed(Vec<(&'static str, String)>),
    /// Answered locally.
    Replied,
}

pub struct RequestFlow {
    router: Rc<Router>,
    state: State,
}

const JSON: (&str, &str) = ("content-type", "application/json");

impl RequestFlow {
    pub fn new(router: Rc<Router>) -> Self {
        RequestFlow {
            router,
            state: State::PassThrough,
        }
    }

    pub fn on_request_headers(&mut self, host: &mut dyn HttpHost, end_of_stream: bool) -> Action {
        // Route selection is the router's: drop whatever a client sent in its headers.
        for h in ROUTING_HEADERS {
            if host.request_header(h).is_some() {
                host.set_request_header(h, None);
            }
        }
        let method = host.request_header(":method").unwrap_or_default();
        let path = host.request_header(":path").unwrap_or_default();
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');

        match (method.as_str(), path) {
            ("GET", "/v1/models") => {
                let body = self.router.models_json().to_string();
                self.reply(host, 200, body.as_bytes());
                Action::Pause
            }
            ("POST", "/v1/chat/completions") => {
                let declared = host
                    .request_header("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if declared.is_some_and(|n| n > self.router.max_body_bytes()) {
                    return self.error(host, &ApiError::too_large(self.router.max_body_bytes()));
                }
                if end_of_stream {
                    return self.error(
                        host,
                        &ApiError::invalid_request("request body is empty", None, "invalid_json"),
                    );
                }
                self.state = State::BufferingChat;
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    pub fn on_request_body(
        &mut self,
        host: &mut dyn HttpHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.state != State::BufferingChat {
            return Action::Continue;
        }
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
        match self.router.route_chat(&body) {
            Err(e) => self.error(host, &e),
            Ok(plan) => {
                host.log_debug(&format!(
                    "routed to model={} decision={}",
                    plan.model,
                    plan.decision.as_deref().unwrap_or("-")
                ));
                for op in &plan.request_headers {
                    match op {
                        HeaderOp::Set(n, v) => host.set_request_header(n, Some(v)),
                        HeaderOp::Add(n, v) => host.add_request_header(n, v),
                        HeaderOp::Remove(n) => host.set_request_header(n, None),
                    }
                }
                if let Some(new_body) = &plan.body {
                    // The stale length must not reach the upstream; the new one spares it a
                    // chunked body.
                    host.set_request_header("content-length", Some(&new_body.len().to_string()));
                    host.replace_request_body(new_body);
                }
                self.state = State::Routed(plan.response_headers);
                Action::Continue
            }
        }
    }

    pub fn on_response_headers(&mut self, host: &mut dyn HttpHost) -> Action {
        if let State::Routed(headers) = &self.state {
            let status = host
                .response_header(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            if (200..300).contains(&status) {
                for (name, value) in headers {
                    host.set_response_header(name, value);
                }
            }
        }
        Action::Continue
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
