//! Registered candidate sets: texts embedded once, scored by cosine
//! similarity against each request's embedding.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One embedded set (row-major `ids.len() × dim` unit vectors).
#[derive(Debug)]
pub struct CandidateSetData {
    pub ids: Vec<String>,
    pub dim: usize,
    pub vectors: Vec<f32>,
}

/// A candidate's similarity to the request.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    pub id: String,
    pub index: usize,
    pub score: f32,
}

impl CandidateSetData {
    /// Cosine similarity of every candidate to the unit vector `query`, best
    /// first, at most `top_k` (0 = all).
    pub fn score(&self, query: &[f32], top_k: usize) -> Vec<CandidateScore> {
        let mut out: Vec<CandidateScore> = self
            .vectors
            .chunks_exact(self.dim.max(1))
            .zip(&self.ids)
            .enumerate()
            .map(|(index, (v, id))| CandidateScore {
                id: id.clone(),
                index,
                score: v.iter().zip(query).map(|(a, b)| a * b).sum(),
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        if top_k > 0 {
            out.truncate(top_k);
        }
        out
    }
}

#[derive(Default)]
pub struct CandidateStore {
    sets: RwLock<HashMap<String, Arc<CandidateSetData>>>,
}

impl CandidateStore {
    pub fn get(&self, name: &str) -> Option<Arc<CandidateSetData>> {
        self.sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Inserts (or replaces) every set at once, unless the store would then
    /// hold more than `max_sets` sets. Returns the number of sets held.
    pub fn insert_all(
        &self,
        new: Vec<(String, CandidateSetData)>,
        max_sets: usize,
    ) -> Result<usize, usize> {
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let added = new.iter().filter(|(n, _)| !sets.contains_key(n)).count();
        if sets.len() + added > max_sets {
            return Err(sets.len());
        }
        for (name, data) in new {
            sets.insert(name, Arc::new(data));
        }
        Ok(sets.len())
    }
}
