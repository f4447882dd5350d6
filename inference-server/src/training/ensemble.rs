//! `vsr ensemble`: joins task directories trained with one layout on one
//! split (other training seeds) into one task whose members the sidecar
//! averages (`TaskSpec::members`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};

use crate::sidecar::tasks::{self, member_prefix, TaskSpec};

/// A member directory's spec and tensors.
pub struct Member {
    pub dir: PathBuf,
    pub spec: TaskSpec,
    pub tensors: HashMap<String, Tensor>,
}

/// Reads `dir/task.json` and `dir/adapter.safetensors`.
pub fn read_member(dir: &Path) -> anyhow::Result<Member> {
    let file = dir.join(tasks::TASK_FILE);
    let spec: TaskSpec = serde_json::from_str(
        &std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?,
    )
    .with_context(|| format!("parsing {}", file.display()))?;
    let weights = dir.join(tasks::ADAPTER_FILE);
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    Ok(Member {
        dir: dir.to_path_buf(),
        spec,
        tensors,
    })
}

/// What members must share beyond the layout: the validation split and the
/// data (or a member could have trained on another's validation examples),
/// and the base encoder.
const SHARED_METADATA: [&str; 4] = [
    "dataset",
    "split",
    "extra_training_data",
    "base_model_sha256",
];

/// The ensemble of `members`: one spec with `members` set (metadata of the
/// first, plus the member directories) and every member's tensors, member
/// k ≥ 1 under [`member_prefix`]. Refuses members of another layout, split,
/// data or base, and members that are ensembles already.
pub fn merge(members: &[Member]) -> anyhow::Result<(TaskSpec, HashMap<String, Tensor>)> {
    let Some(first) = members.first() else {
        bail!("an ensemble needs members");
    };
    if members.len() < 2 {
        bail!("an ensemble needs at least two members");
    }
    let layout = |s: &TaskSpec| TaskSpec {
        metadata: None,
        ..s.clone()
    };
    let meta = |m: &Member, key: &str| {
        m.spec
            .metadata
            .as_ref()
            .and_then(|v| v.get(key))
            .cloned()
            .unwrap_or_default()
    };
    for m in members {
        if m.spec.members != 1 {
            bail!("{} is an ensemble already", m.dir.display());
        }
        if layout(&m.spec) != layout(&first.spec) {
            bail!(
                "{} has another layout than {} (task.json differs beyond metadata)",
                m.dir.display(),
                first.dir.display()
            );
        }
        for key in SHARED_METADATA {
            if meta(m, key) != meta(first, key) {
                bail!(
                    "{}: metadata.{key} {} differs from {}'s {}",
                    m.dir.display(),
                    meta(m, key),
                    first.dir.display(),
                    meta(first, key)
                );
            }
        }
    }
    let mut tensors = HashMap::new();
    for (k, m) in members.iter().enumerate() {
        for (name, t) in &m.tensors {
            let name = match member_prefix(k) {
                Some(p) => format!("{p}.{name}"),
                None => name.clone(),
            };
            tensors.insert(name, t.clone());
        }
    }
    let mut metadata = first.spec.metadata.clone().unwrap_or_default();
    if let Some(obj) = metadata.as_object_mut() {
        obj.insert("ensembled_by".into(), "vsr ensemble".into());
        obj.insert(
            "member_metadata".into(),
            members
                .iter()
                .map(|m| m.spec.metadata.clone().unwrap_or_default())
                .collect(),
        );
    }
    let spec = TaskSpec {
        members: members.len(),
        metadata: Some(metadata),
        ..first.spec.clone()
    };
    Ok((spec, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::tasks::TaskKind;

    fn member(dir: &str, split_seed: u64, value: f32) -> Member {
        let spec = TaskSpec {
            metadata: Some(serde_json::json!({"split": {"seed": split_seed}, "dataset": "d"})),
            ..tasks::test_spec(TaskKind::Sequence)
        };
        let t = Tensor::new(&[value], &Device::Cpu).unwrap();
        Member {
            dir: dir.into(),
            spec,
            tensors: HashMap::from([("head.out.bias".to_string(), t)]),
        }
    }

    #[test]
    fn merge_prefixes_later_members_and_checks_they_match() {
        let (spec, t) = merge(&[member("a", 42, 1.0), member("b", 42, 2.0)]).unwrap();
        assert_eq!(spec.members, 2);
        let value = |n: &str| t[n].to_vec1::<f32>().unwrap()[0];
        assert_eq!(value("head.out.bias"), 1.0);
        assert_eq!(value("member.1.head.out.bias"), 2.0);
        assert_eq!(t.len(), 2);
        let meta = spec.metadata.unwrap();
        assert_eq!(meta["ensembled_by"], "vsr ensemble");
        assert_eq!(meta["member_metadata"].as_array().unwrap().len(), 2);

        let refused = |members: &[Member], why: &str| {
            let e = merge(members).err().unwrap().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(&[member("a", 42, 1.0)], "at least two");
        // Another split: its training set may hold the other's validation.
        refused(
            &[member("a", 42, 1.0), member("b", 7, 2.0)],
            "metadata.split",
        );
        let mut other = member("b", 42, 2.0);
        other.spec.top_layers = 2;
        refused(&[member("a", 42, 1.0), other], "another layout");
        let mut nested = member("b", 42, 2.0);
        nested.spec.members = 2;
        refused(&[member("a", 42, 1.0), nested], "ensemble already");
    }
}
