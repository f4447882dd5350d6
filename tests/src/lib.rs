//! End-to-end harness: the real Envoy from `.venv` (or `VSR_ENVOY`), the real filter
//! module, `vsr mock-llm` backends and the bootstrap `vsr render` writes. Anything missing
//! fails the test with the command that provides it; nothing is skipped.
//!
//! Long-lived processes run under a small shell watchdog ([`Proc`]) that kills them when
//! the test process goes away, even if their guard is in a `static` that never drops.

pub mod bench;
pub mod http;
pub mod paths;
pub mod proc;
pub mod sidecar;
pub mod stack;

pub use http::{Reply, RAW_TIMEOUT};
pub use proc::Proc;
pub use sidecar::{Redis, Sidecar, SidecarStack};
pub use stack::Stack;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A port nothing listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
