//! Keyword signals: every keyword of every rule compiled into one `RegexSet`, so a
//! request's text is scanned once whatever the number of rules.

use regex::RegexSet;

use crate::config::{ConfigError, KeywordOperator, KeywordSignal};

/// The regex for one keyword. Literals are escaped and bounded by `\b` on each side
/// that starts or ends with a word character (so `c++` still matches before a space),
/// except in scripts written without spaces (Chinese, Japanese, Thai, ...), where a word
/// boundary would never occur inside a sentence.
pub fn keyword_pattern(keyword: &str, case_sensitive: bool, is_regex: bool) -> String {
    let flags = if case_sensitive { "" } else { "(?i)" };
    if is_regex {
        return format!("{flags}(?:{keyword})");
    }
    let is_word = |c: char| (c.is_alphanumeric() || c == '_') && !is_spaceless_script(c);
    let open = if keyword.chars().next().is_some_and(is_word) {
        r"\b"
    } else {
        ""
    };
    let close = if keyword.chars().last().is_some_and(is_word) {
        r"\b"
    } else {
        ""
    };
    format!("{flags}{open}{}{close}", regex::escape(keyword))
}

fn is_spaceless_script(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF      // Thai, Lao
        | 0x1000..=0x109F    // Myanmar
        | 0x1780..=0x17FF    // Khmer
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FFFF) // CJK extensions B+
}

#[derive(Debug)]
struct Rule {
    operator: KeywordOperator,
    /// Range of this rule's patterns in the set.
    first: usize,
    count: usize,
}

/// Compiled keyword rules.
#[derive(Debug)]
pub struct KeywordMatcher {
    set: RegexSet,
    rules: Vec<Rule>,
}

impl KeywordMatcher {
    pub fn compile(signals: &[KeywordSignal]) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        let mut rules = Vec::with_capacity(signals.len());
        for s in signals {
            let first = patterns.len();
            patterns.extend(
                s.keywords
                    .iter()
                    .map(|k| keyword_pattern(k, s.case_sensitive, s.regex)),
            );
            rules.push(Rule {
                operator: s.operator,
                first,
                count: s.keywords.len(),
            });
        }
        let set = RegexSet::new(&patterns).map_err(|e| {
            ConfigError::new("signals.keywords", format!("cannot compile keywords: {e}"))
        })?;
        Ok(KeywordMatcher { set, rules })
    }

    /// One bool per rule, in config order.
    pub fn evaluate(&self, text: &str) -> Vec<bool> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        let hits = self.set.matches(text);
        self.rules
            .iter()
            .map(|r| {
                let matched = (r.first..r.first + r.count)
                    .filter(|&i| hits.matched(i))
                    .count();
                match r.operator {
                    KeywordOperator::AND => matched == r.count,
                    KeywordOperator::OR => matched > 0,
                    KeywordOperator::NOR => matched == 0,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(op: KeywordOperator, kws: &[&str], case_sensitive: bool) -> KeywordSignal {
        KeywordSignal {
            name: "r".into(),
            operator: op,
            keywords: kws.iter().map(|s| s.to_string()).collect(),
            case_sensitive,
            regex: false,
        }
    }

    fn eval(r: KeywordSignal, text: &str) -> bool {
        KeywordMatcher::compile(&[r]).unwrap().evaluate(text)[0]
    }

    #[test]
    fn or_matches_any_keyword_on_word_boundaries() {
        let r = || rule(KeywordOperator::OR, &["urgent", "asap"], false);
        assert!(eval(r(), "This is URGENT, please"));
        assert!(eval(r(), "reply asap."));
        assert!(
            !eval(r(), "no urgency here"),
            "must not match inside a word"
        );
        assert!(!eval(r(), "nothing"));
    }

    #[test]
    fn and_needs_every_keyword() {
        let r = || rule(KeywordOperator::AND, &["security", "vulnerability"], false);
        assert!(eval(r(), "a security vulnerability in auth"));
        assert!(!eval(r(), "a security review"));
    }

    #[test]
    fn nor_matches_when_no_keyword_occurs() {
        let r = || rule(KeywordOperator::NOR, &["password", "secret"], false);
        assert!(eval(r(), "tell me a joke"));
        assert!(!eval(r(), "what is my Password"));
    }

    #[test]
    fn case_sensitive_rules_respect_case() {
        assert!(eval(rule(KeywordOperator::OR, &["SQL"], true), "write SQL"));
        assert!(!eval(
            rule(KeywordOperator::OR, &["SQL"], true),
            "write sql"
        ));
        assert!(eval(
            rule(KeywordOperator::OR, &["SQL"], false),
            "write sql"
        ));
    }

    #[test]
    fn keywords_are_literal_not_regex() {
        assert!(eval(
            rule(KeywordOperator::OR, &["c++"], false),
            "I love C++ templates"
        ));
        assert!(!eval(rule(KeywordOperator::OR, &["a.b"], false), "axb"));
        assert!(eval(
            rule(KeywordOperator::OR, &["a.b"], false),
            "see a.b now"
        ));
    }

    #[test]
    fn multi_word_and_unicode_keywords() {
        assert!(eval(
            rule(KeywordOperator::OR, &["machine learning"], false),
            "Intro to Machine Learning?"
        ));
        assert!(eval(
            rule(KeywordOperator::OR, &["größe"], false),
            "die GRÖSSE? nein, die Größe"
        ));
        assert!(eval(
            rule(KeywordOperator::OR, &["数学"], false),
            "这是数学题"
        ));
    }

    #[test]
    fn regex_rules_use_the_pattern() {
        let mut r = rule(KeywordOperator::OR, &[r"\d{3}-\d{2}-\d{4}"], false);
        r.regex = true;
        assert!(eval(r.clone(), "ssn 123-45-6789"));
        assert!(!eval(r, "ssn 123-456-789"));
    }

    #[test]
    fn every_rule_is_reported() {
        let m = KeywordMatcher::compile(&[
            rule(KeywordOperator::OR, &["math"], false),
            rule(KeywordOperator::OR, &["code"], false),
            rule(KeywordOperator::OR, &["poem"], false),
        ])
        .unwrap();
        assert_eq!(m.evaluate("math and code"), vec![true, true, false]);
    }
}
