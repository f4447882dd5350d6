//! The native half of the router: CLI commands and the inference sidecar.

pub mod cli;
pub mod sidecar;
