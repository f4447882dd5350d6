//! Host-independent router logic. The request's path through it:
//! [`openai`] parses the body once → [`signals`] extract keyword (and later model) signals →
//! [`decision`] picks a decision → [`mutate`] rewrites the body → [`router`] assembles the
//! plan (headers, body) → [`flow`] applies it through an [`flow::HttpHost`].
//!
//! Nothing here depends on proxy-wasm: the filter shim, the CLI, the tests and the browser
//! playground all use the same code.

pub mod config;
pub mod decision;
pub mod flow;
pub mod mutate;
pub mod openai;
pub mod router;
pub mod signals;

#[cfg(test)]
mod tests;

pub use config::validate::Capabilities;
pub use router::Router;
