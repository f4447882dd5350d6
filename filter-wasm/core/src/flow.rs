//! The per-request state machine the proxy-wasm shim drives. Host calls go through
//! [`HttpHost`], so the same flow runs under Envoy and under the fake host in tests.

use std::rc::Rc;

use crate::openai::ApiError;
use crate::router::{HeaderOp, Router, ROUTING_HEADERS};

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
        match self.router.route_chat(&body) {
            Err(e) => self.error(host, &e),
            Ok(plan) => {
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
