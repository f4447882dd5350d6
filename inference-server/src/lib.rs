//! The native half of the router: CLI commands and the inference sidecar.

pub mod bootstrap;
pub mod cli;
pub mod config_file;
pub mod mock_llm;
pub mod project;
pub mod sidecar;
pub mod supervise;
pub mod training;
