//! `HttpHost` over the `Result`-returning proxy-wasm hostcalls. A failed hostcall is
//! logged and read as "absent"; nothing here can panic.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use router_core::flow::HttpHost;

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub struct ProxyWasmHost {
    /// Size of the buffered request body, for replacing it whole.
    pub body_size: usize,
}

fn warn_on_err<T>(what: &str, r: Result<T, proxy_wasm::types::Status>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(status) => {
            log(
                LogLevel::Warn,
                &format!("vsr: hostcall {what} failed: {status:?}"),
            );
            None
        }
    }
}

impl HttpHost for ProxyWasmHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        warn_on_err(
            "request_headers",
            hostcalls::get_map(MapType::HttpRequestHeaders),
        )
        .unwrap_or_default()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        warn_on_err(
            "set_request_header",
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value),
        );
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        warn_on_err(
            "add_request_header",
            hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value),
        );
    }

    fn request_body(&self, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, len)
            .ok()
            .flatten()
    }

    fn replace_request_body(&mut self, body: &[u8]) {
        warn_on_err(
            "replace_request_body",
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, self.body_size, body),
        );
    }

    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        warn_on_err(
            "set_response_header",
            hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value)),
        );
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        warn_on_err(
            "send_http_response",
            hostcalls::send_http_response(status, headers.to_vec(), Some(body)),
        );
    }

    fn log_debug(&self, message: &str) {
        log(LogLevel::Debug, message);
    }

    fn response_body(&self, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, len)
            .ok()
            .flatten()
    }

    fn dispatch_grpc(
        &mut self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        // The hostcall registers the token with the active (this HTTP) context, so the
        // answer comes back to this request's `on_grpc_call_response`.
        warn_on_err(
            "dispatch_grpc_call",
            hostcalls::dispatch_grpc_call(
                cluster,
                service,
                method,
                Vec::new(),
                Some(message),
                Duration::from_millis(timeout_ms),
            ),
        )
    }

    fn resume_request(&mut self) {
        warn_on_err("resume_http_request", hostcalls::resume_http_request());
    }

    fn resume_response(&mut self) {
        warn_on_err("resume_http_response", hostcalls::resume_http_response());
    }

    fn now_unix_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The body of a gRPC answer (None when there is none or it cannot be read).
pub fn grpc_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}
