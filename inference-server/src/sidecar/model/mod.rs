//! Model code (our own BERT, so we control layer-by-layer execution).

pub mod bert;
