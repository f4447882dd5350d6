//! The confidence strategy (`configs/confidence.yaml`): the decision with the largest share
//! of satisfied conditions wins whatever its priority; ties go to the first in the file.

use std::sync::OnceLock;

use vsr_e2e::Stack;

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| Stack::start(include_str!("../configs/confidence.yaml"), &[]))
}

fn decision(text: &str) -> (String, String) {
    let r = stack().ask(text);
    let backend = r.echo()["backend"].as_str().unwrap().to_string();
    (
        r.header("x-vsr-selected-decision")
            .unwrap_or("-")
            .to_string(),
        backend,
    )
}

#[test]
fn full_match_beats_higher_priority_partial_match() {
    // broad (priority 100) satisfies 1 of 3 conditions; narrow (priority 1) all of its one.
    assert_eq!(decision("alpha"), ("narrow".into(), "narrow".into()));
}

#[test]
fn equal_confidence_goes_to_the_first_decision_in_the_file() {
    // All three decisions are fully satisfied; narrow_too's priority 1000 does not count.
    assert_eq!(
        decision("alpha beta gamma"),
        ("broad".into(), "broad".into())
    );
}

#[test]
fn a_partial_match_still_wins_when_it_is_the_only_one() {
    assert_eq!(decision("just beta"), ("broad".into(), "broad".into()));
}

#[test]
fn no_match_uses_the_default_model() {
    assert_eq!(decision("delta"), ("-".into(), "fallback".into()));
}
