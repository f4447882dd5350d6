//! HTTP for tests: a blocking client that returns every status as a [`Reply`], and raw
//! socket exchanges for what a client library will not send (oversized and chunked bodies).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// Upper bound on any exchange; tests fail instead of hanging.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// A response, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lowercased names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// The `mock` echo: what the backend received.
    pub fn echo(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self:?}");
        let echo = self.json()["mock"].clone();
        assert!(echo.is_object(), "no mock echo in {self:?}");
        echo
    }

    /// Asserts the OpenAI error shape and returns `error.code`.
    pub fn error_code(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let e = &self.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no error.message: {self:?}"
        );
        assert_eq!(e["type"], "invalid_request_error", "{self:?}");
        assert!(e.get("param").is_some(), "no error.param: {self:?}");
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code: {self:?}"))
            .to_string()
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(RAW_TIMEOUT))
            .build()
            .into()
    })
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    let headers = r
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .expect("read response body");
    Reply {
        status: r.status().as_u16(),
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    reply(
        agent()
            .get(url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}")),
    )
}

/// POSTs `body` as JSON with extra `headers`.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    reply(req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}")))
}

/// Writes `head` (request line and headers, without the blank line), then `body` parts
/// from another thread, and reads the response. Writing stops quietly when the server
/// has answered and closed, as it may for a rejected body.
pub fn raw(port: u16, head: &str, body: Vec<Vec<u8>>) -> Reply {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(RAW_TIMEOUT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let head = format!("{head}\r\nconnection: close\r\n\r\n");
    let sender = std::thread::spawn(move || {
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        for part in body {
            if writer.write_all(&part).is_err() {
                return;
            }
        }
    });
    let mut raw = Vec::new();
    let mut stream = stream;
    // A reset after the full response still leaves what was read.
    let _ = stream.read_to_end(&mut raw);
    let _ = sender.join();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete response: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
