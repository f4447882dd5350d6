//! Host-independent router logic. The request's path through it:
//! [`openai`] parses the body once → [`signals`] extract keyword signals and read model
//! signals from one sidecar call → [`decision`] picks a decision → [`guard`] checks for
//! jailbreaks and PII → [`cache`] keys the semantic cache lookup → [`mutate`] rewrites the
//! body → [`router`] assembles each step → [`flow`] drives the steps (and the sidecar
//! calls) through an [`flow::HttpHost`]; [`response`] writes local answers.
//!
//! Nothing here depends on proxy-wasm: the filter shim, the CLI, the tests and the browser
//! playground all use the same code.

pub mod cache;
pub mod config;
pub mod decision;
pub mod flow;
pub mod guard;
pub mod mutate;
pub mod openai;
pub mod response;
pub mod router;
pub mod signals;

#[cfg(test)]
mod tests;

pub use config::validate::Capabilities;
pub use router::Router;
