//! Templated replies of a user to an assistant's answer, per `feedback`
//! label. GoEmotions (Reddit comments) seldom talks to an assistant about
//! its answer; these short phrases cover that register. They are composed
//! as opener + core + ending from hand-written lists, and none of them is
//! one of the acceptance examples (`data::acceptance_examples`), which a
//! unit test checks.

use super::data::normalize;
use super::Rng;

/// At most this many replies per label (a seeded choice of the
/// combinations, one per text up to punctuation).
pub const PER_LABEL: usize = 300;

const SATISFIED_OPENERS: &[&str] = &[
    "",
    "Great, ",
    "Awesome, ",
    "Nice, ",
    "Wow, ",
    "Ok ",
    "Excellent, ",
    "Oh nice, ",
    "Yes! ",
];
const SATISFIED: &[&str] = &[
    "thank you so much",
    "that worked",
    "this is exactly what I needed",
    "that solved my problem",
    "much appreciated",
    "really helpful answer",
    "the code runs fine now",
    "it works now, thanks",
    "that makes total sense now",
    "brilliant explanation",
    "you saved me hours",
    "got it, thanks a lot",
    "that's spot on",
    "this is great",
    "love it, thanks",
    "clear and helpful, cheers",
    "that did the trick",
    "perfect answer, thanks",
    "well explained",
    "thanks, this helps a lot",
];
const SATISFIED_ENDINGS: &[&str] = &["", "!", ".", " :)"];

const CLARIFY_OPENERS: &[&str] = &[
    "",
    "Sorry, ",
    "Hmm, ",
    "Wait, ",
    "Um, ",
    "I'm confused. ",
    "I'm lost. ",
    "Not sure I follow. ",
];
const CLARIFY: &[&str] = &[
    "what do you mean by that",
    "could you say that in simpler terms",
    "what does that part mean",
    "can you clarify the second step",
    "I still don't get it",
    "could you go over it once more, slower",
    "what exactly do you mean",
    "can you break it down step by step",
    "could you elaborate on that",
    "which one are you referring to",
    "can you rephrase that",
    "how does that work exactly",
    "why is that the case",
    "can you give an example",
    "what is meant by the last sentence",
    "I didn't follow the middle part",
    "could you be more specific",
    "can you walk me through it",
    "what does this term mean",
    "that went over my head, can you simplify it",
];
const CLARIFY_ENDINGS: &[&str] = &["?", "", "? Thanks"];

const WRONG_OPENERS: &[&str] = &[
    "",
    "No, ",
    "Nope, ",
    "Hmm, ",
    "Actually, ",
    "Sorry but ",
    "Wait, ",
];
const WRONG: &[&str] = &[
    "that's not correct",
    "that is incorrect",
    "your answer is wrong",
    "it should be 56, not 54",
    "you got the date wrong, it was 1989",
    "that's false",
    "the code doesn't work, it throws an error",
    "check your math, that doesn't add up",
    "the capital of Australia is Canberra, not Sydney",
    "you made a mistake in step two",
    "that's not right",
    "the result is off by one",
    "that function doesn't exist",
    "this gives the wrong output",
    "you mixed up the two formulas",
    "that's inaccurate",
    "the correct value is 12",
    "that contradicts what you said before",
    "that's a factual error",
    "the total should be 300",
];
const WRONG_ENDINGS: &[&str] = &["", ".", "!"];

const DIFFERENT_OPENERS: &[&str] = &[
    "",
    "Hmm, ",
    "Ok, ",
    "Not quite what I wanted. ",
    "Thanks, but ",
    "Meh. ",
    "I don't like this one. ",
];
const DIFFERENT: &[&str] = &[
    "can you suggest something else",
    "show me a different approach",
    "try a different one",
    "give me some alternatives",
    "any other ideas",
    "could you do it another way",
    "make it shorter instead",
    "something different",
    "write another version",
    "can I see a few more suggestions",
    "I'd like a different style",
    "try again with a new idea",
    "change the tone and rewrite it",
    "use another library instead",
    "suggest a different recipe",
    "make it more formal",
    "can you propose other names",
    "give me a new one",
    "I want a different color scheme",
    "try another angle",
];
const DIFFERENT_ENDINGS: &[&str] = &["", " please", "?", "."];

fn compose(
    label: &'static str,
    openers: &[&str],
    cores: &[&str],
    endings: &[&str],
    rng: &mut Rng,
) -> Vec<(String, &'static str)> {
    let mut all = Vec::new();
    for o in openers {
        for c in cores {
            for e in endings {
                let mut text = format!("{o}{c}{e}");
                // Capitalize the first letter.
                if let Some(f) = text.chars().next() {
                    text.replace_range(..f.len_utf8(), &f.to_uppercase().to_string());
                }
                all.push((text, label));
            }
        }
    }
    rng.shuffle(&mut all);
    // Variants that differ only in punctuation would sit on both sides of
    // the split: keep one per normalized text.
    let mut seen = std::collections::HashSet::new();
    all.retain(|(t, _)| seen.insert(normalize(t)));
    all.truncate(PER_LABEL);
    all
}

/// The templated replies, in a fixed (seeded) order.
pub fn generate() -> Vec<(String, &'static str)> {
    let mut rng = Rng::new(0xFEED);
    let mut out = compose(
        "satisfied",
        SATISFIED_OPENERS,
        SATISFIED,
        SATISFIED_ENDINGS,
        &mut rng,
    );
    out.extend(compose(
        "need_clarification",
        CLARIFY_OPENERS,
        CLARIFY,
        CLARIFY_ENDINGS,
        &mut rng,
    ));
    out.extend(compose(
        "wrong_answer",
        WRONG_OPENERS,
        WRONG,
        WRONG_ENDINGS,
        &mut rng,
    ));
    out.extend(compose(
        "want_different",
        DIFFERENT_OPENERS,
        DIFFERENT,
        DIFFERENT_ENDINGS,
        &mut rng,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::super::data::{acceptance_examples, FEEDBACK_LABELS};
    use super::*;

    #[test]
    fn templates_are_labelled_and_leave_out_the_acceptance_examples() {
        let t = generate();
        assert_eq!(t, generate(), "deterministic");
        for l in FEEDBACK_LABELS {
            let n = t.iter().filter(|(_, x)| *x == l).count();
            assert!((100..=PER_LABEL).contains(&n), "{l}: {n} templates");
        }
        let texts: std::collections::HashSet<String> =
            t.iter().map(|(s, _)| normalize(s)).collect();
        assert_eq!(texts.len(), t.len(), "no duplicates");
        for (q, _) in acceptance_examples("feedback") {
            let n = normalize(q);
            assert!(
                !texts
                    .iter()
                    .any(|s| s.contains(&n) || n.contains(s.as_str())),
                "{q} overlaps a template"
            );
        }
    }
}
