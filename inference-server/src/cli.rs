//! One module per `vsr` subcommand; each exposes `XxxArgs` (clap) and `run`.

pub mod ensemble;
pub mod eval;
pub mod init;
pub mod mock_llm;
pub mod render;
pub mod run;
pub mod serve;
pub mod train;
pub mod validate;
