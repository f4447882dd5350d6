//! Deterministic PII recognizers: patterns with checksums or fixed structure that a
//! model should not have to learn (and that it would learn less reliably). The `pii`
//! task returns their spans beside the model's, each marked with its source.
//!
//! Each recognizer finds candidates with a regex, then validates them (Luhn for cards,
//! mod-97 for IBANs, SSA ranges for SSNs, std parsers for IP addresses), so a score of
//! 1.0 means "structurally valid", not "certainly personal".

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use regex::Regex;

/// A recognized span. Offsets are in bytes of the UTF-8 text; [`char_offsets`] converts.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternSpan {
    pub entity_type: &'static str,
    pub byte_start: usize,
    pub byte_end: usize,
    pub score: f32,
}

struct Recognizer {
    entity_type: &'static str,
    pattern: &'static str,
    /// Checks a candidate match (given the text of its line before it, for
    /// context words); returns its score, or None to drop it.
    validate: fn(&str, &str) -> Option<f32>,
}

const RECOGNIZERS: [Recognizer; 10] = [
    Recognizer {
        entity_type: "EMAIL_ADDRESS",
        pattern: r"(?i)\b[a-z0-9._%+-]+@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}\b",
        validate: |_, _| Some(1.0),
    },
    Recognizer {
        // A scheme, or a host written the way people write web addresses.
        entity_type: "URL",
        pattern: r"(?i)\b(?:https?://|www\.)[^\s<>()\[\]]+[^\s<>()\[\].,;:!?'\x22]",
        validate: |_, _| Some(0.9),
    },
    Recognizer {
        entity_type: "CREDIT_CARD",
        pattern: r"\b(?:\d[ -]?){11,18}\d\b",
        validate: |s, _| credit_card(s),
    },
    Recognizer {
        // Compact or in groups of four; people write IBANs in lower case
        // too (mod-97 does not care). Groups keep a following word out.
        entity_type: "IBAN_CODE",
        pattern: r"(?i)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        validate: |s, _| iban(s),
    },
    Recognizer {
        entity_type: "US_SSN",
        pattern: r"\b\d{3}([- ]?)\d{2}([- ]?)\d{4}\b",
        validate: |s, _| ssn(s),
    },
    Recognizer {
        // Optional country code and area code in parentheses, digit groups,
        // an optional extension ("x769", "ext. 12"); or one bare run of
        // digits, which `phone` accepts only after a context word.
        entity_type: "PHONE_NUMBER",
        pattern: r"(?i)(?:(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,8}){1,4}|\b\d{7,12})(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b",
        validate: phone,
    },
    Recognizer {
        entity_type: "IP_ADDRESS",
        pattern: r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        validate: |s, _| s.parse::<Ipv4Addr>().ok().map(|_| 1.0),
    },
    Recognizer {
        entity_type: "IP_ADDRESS",
        pattern: r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}",
        validate: |s, _| {
            (s.contains("::") || s.matches(':').count() == 7)
                .then_some(())
                .and_then(|_| s.parse::<Ipv6Addr>().ok())
                .map(|_| 1.0)
        },
    },
    Recognizer {
        entity_type: "MAC_ADDRESS",
        pattern: r"(?i)\b(?:[0-9a-f]{2}(?::[0-9a-f]{2}){5}|[0-9a-f]{2}(?:-[0-9a-f]{2}){5})\b",
        validate: |_, _| Some(1.0),
    },
    Recognizer {
        entity_type: "DOMAIN_NAME",
        pattern: r"(?i)\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:com|org|net|edu|gov|io|ai|dev|app|info|biz|co|uk|de|fr|es|it|nl|eu|us|ca|au|jp|cn|in|br|ru|ch|se|no|dk|fi|pl|be|at|ie|nz|pt|gr|cz|sk|hu|ro|bg|hr|si|ee|lv|lt|lu|is|gl|cy|mt|tr|il|ua|mx|ar|cl|za|kr|tw|hk|sg)\b",
        validate: |_, _| Some(0.6),
    },
];

fn compiled() -> &'static [(Regex, &'static Recognizer)] {
    static COMPILED: OnceLock<Vec<(Regex, &'static Recognizer)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        RECOGNIZERS
            .iter()
            .filter_map(|r| Regex::new(r.pattern).ok().map(|re| (re, r)))
            .collect()
    })
}

/// Every recognized span in `text`, without overlaps (on overlap the higher score wins,
/// then the longer span), sorted by position.
pub fn recognize(text: &str) -> Vec<PatternSpan> {
    let mut found: Vec<PatternSpan> = Vec::new();
    for (re, r) in compiled() {
        for m in re.find_iter(text) {
            let line_start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
            if let Some(score) = (r.validate)(m.as_str(), &text[line_start..m.start()]) {
                found.push(PatternSpan {
                    entity_type: r.entity_type,
                    byte_start: m.start(),
                    byte_end: m.end(),
                    score,
                });
            }
        }
    }
    found.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((b.byte_end - b.byte_start).cmp(&(a.byte_end - a.byte_start)))
    });
    let mut kept: Vec<PatternSpan> = Vec::new();
    for s in found {
        if kept
            .iter()
            .all(|k| s.byte_end <= k.byte_start || s.byte_start >= k.byte_end)
        {
            kept.push(s);
        }
    }
    kept.sort_by_key(|s| s.byte_start);
    kept
}

/// Character (Unicode scalar) offsets of a byte span.
pub fn char_offsets(text: &str, byte_start: usize, byte_end: usize) -> (usize, usize) {
    let start = text.get(..byte_start).map_or(0, |s| s.chars().count());
    let len = text
        .get(byte_start..byte_end)
        .map_or(0, |s| s.chars().count());
    (start, start + len)
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Luhn checksum over 12–19 digits, with a known issuer prefix (12 digits
/// only for Maestro, whose numbers start 50 or 56–69).
fn credit_card(s: &str) -> Option<f32> {
    let d = digits(s);
    if !(12..=19).contains(&d.len()) {
        return None;
    }
    let prefix2 = d[0] * 10 + d[1];
    let maestro = prefix2 == 50 || (56..=69).contains(&prefix2);
    if d.len() == 12 && !maestro {
        return None;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 {
                    x * 2 - 9
                } else {
                    x * 2
                }
            } else {
                x
            }
        })
        .sum();
    if !sum.is_multiple_of(10) {
        return None;
    }
    let prefix4 = prefix2 * 100 + d[2] * 10 + d[3];
    let known = d[0] == 4 // Visa
        || (51..=55).contains(&prefix2) || (2221..=2720).contains(&prefix4) // Mastercard
        || prefix2 == 34 || prefix2 == 37 // Amex
        || prefix4 == 6011 || prefix2 == 65 // Discover
        || (3528..=3589).contains(&prefix4) // JCB
        || prefix2 == 36 || prefix2 == 38 || (300..=305).contains(&(prefix4 / 10)) // Diners
        || maestro;
    Some(if known { 1.0 } else { 0.7 })
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1.
fn iban(s: &str) -> Option<f32> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return None;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = c.to_digit(36)?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some(1.0)
}

/// SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000; separators consistent.
fn ssn(s: &str) -> Option<f32> {
    let d = digits(s);
    let separators: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
    if d.len() != 9
        || (separators.len() == 2 && separators[0] != separators[1])
        || separators.len() == 1
    {
        return None;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    // Without separators nine digits are often something else: lower confidence.
    Some(if separators.is_empty() { 0.5 } else { 1.0 })
}

/// Words that announce a phone number on the same line ("Mobile: ...").
const PHONE_CONTEXT: [&str; 8] = [
    "phone", "mobile", "cell", "tel", "fax", "desk", "call", "whatsapp",
];

/// E.164 allows at most 15 digits (the extension aside); fewer than 7 is
/// not a dialable number. Without a `+` or at least ten grouped digits a
/// candidate is a phone number only after a context word on its line, as
/// presidio's context enhancement does: "Mobile: 723 813 266", "Desk:
/// 5403926876".
fn phone(s: &str, before: &str) -> Option<f32> {
    let lower = s.to_ascii_lowercase();
    let number = lower
        .find(['x', 'e'])
        .map_or(lower.as_str(), |i| &lower[..i]);
    let n = digits(number).len();
    if !(7..=15).contains(&n) {
        return None;
    }
    let international = number.starts_with('+');
    let grouped = number.trim_end().contains(['-', ' ', '.', '(']);
    let context = {
        let from = before.char_indices().rev().nth(29).map_or(0, |(i, _)| i);
        let near = before[from..].to_lowercase();
        PHONE_CONTEXT.iter().any(|w| near.contains(w))
    };
    match (international, grouped) {
        (true, _) => Some(0.9),
        (false, true) if n >= 10 => Some(0.75),
        _ if context => Some(0.7),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(text: &str) -> Vec<(&'static str, &str)> {
        recognize(text)
            .into_iter()
            .map(|s| (s.entity_type, &text[s.byte_start..s.byte_end]))
            .collect()
    }

    fn finds(text: &str, entity: &str, span: &str) {
        let got = types(text);
        assert!(
            got.contains(&(entity, span)),
            "{text:?}: expected {entity} {span:?}, got {got:?}"
        );
    }

    fn misses(text: &str, entity: &str) {
        let got = types(text);
        assert!(
            !got.iter().any(|(t, _)| *t == entity),
            "{text:?}: unexpected {entity} in {got:?}"
        );
    }

    #[test]
    fn email() {
        finds(
            "write to jane.doe+tag@mail.example.co.uk today",
            "EMAIL_ADDRESS",
            "jane.doe+tag@mail.example.co.uk",
        );
        misses("not an email: jane@localhost or @handle", "EMAIL_ADDRESS");
    }

    #[test]
    fn credit_cards_need_luhn() {
        finds(
            "card 4111 1111 1111 1111 exp 12/27",
            "CREDIT_CARD",
            "4111 1111 1111 1111",
        );
        finds("amex 3782-822463-10005", "CREDIT_CARD", "3782-822463-10005");
        finds("mc 5555555555554444.", "CREDIT_CARD", "5555555555554444");
        // Twelve digits only for Maestro.
        finds("cc 503802053770 on file", "CREDIT_CARD", "503802053770");
        misses("ref 411111111113 on file", "CREDIT_CARD");
        misses("card 4111 1111 1111 1112", "CREDIT_CARD");
        misses("order 1234567890123", "CREDIT_CARD");
    }

    #[test]
    fn ssn_ranges() {
        finds("my SSN is 123-45-6789", "US_SSN", "123-45-6789");
        finds("ssn 536 22 1234", "US_SSN", "536 22 1234");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
        ] {
            misses(&format!("ssn {bad}"), "US_SSN");
        }
    }

    #[test]
    fn iban_mod97() {
        finds(
            "pay to DE89 3704 0044 0532 0130 00 please",
            "IBAN_CODE",
            "DE89 3704 0044 0532 0130 00",
        );
        finds(
            "GB82WEST12345698765432",
            "IBAN_CODE",
            "GB82WEST12345698765432",
        );
        finds(
            "my iban is gb82west12345698765432",
            "IBAN_CODE",
            "gb82west12345698765432",
        );
        misses("DE89 3704 0044 0532 0130 01", "IBAN_CODE");
        misses("XX00 0000 0000 0000", "IBAN_CODE");
    }

    #[test]
    fn phones_international_and_grouped() {
        finds(
            "call +1 415-555-0132 now",
            "PHONE_NUMBER",
            "+1 415-555-0132",
        );
        finds("tel +44 20 7946 0958", "PHONE_NUMBER", "+44 20 7946 0958");
        finds("office (415) 555-0132", "PHONE_NUMBER", "(415) 555-0132");
        finds("ruf +49 30 901820", "PHONE_NUMBER", "+49 30 901820");
        finds(
            "Desk: +1-903-140-4508x769",
            "PHONE_NUMBER",
            "+1-903-140-4508x769",
        );
        finds(
            "Fax: 259.735.7502 ext. 45",
            "PHONE_NUMBER",
            "259.735.7502 ext. 45",
        );
        finds(
            "Desk: (898)666-3621x0135",
            "PHONE_NUMBER",
            "(898)666-3621x0135",
        );
        finds("Mobile: 0341 8387176", "PHONE_NUMBER", "0341 8387176");
        // Short or bare numbers need a context word on their line.
        finds("Mobile: 723 813 266", "PHONE_NUMBER", "723 813 266");
        finds("Desk: 5403926876", "PHONE_NUMBER", "5403926876");
        misses("order 5403926876 shipped", "PHONE_NUMBER");
        misses("Mobile: yes\nwe sold 723 813 266 units", "PHONE_NUMBER");
        misses("in 2024 we sold 12 units", "PHONE_NUMBER");
        misses("version 1.2.3", "PHONE_NUMBER");
    }

    #[test]
    fn ip_addresses() {
        finds(
            "server 192.168.10.254 is down",
            "IP_ADDRESS",
            "192.168.10.254",
        );
        finds(
            "v6 2001:db8::8a2e:370:7334 up",
            "IP_ADDRESS",
            "2001:db8::8a2e:370:7334",
        );
        finds(
            "full fe80:0:0:0:202:b3ff:fe1e:8329",
            "IP_ADDRESS",
            "fe80:0:0:0:202:b3ff:fe1e:8329",
        );
        misses("bad 999.1.1.1 and 10:30", "IP_ADDRESS");
    }

    #[test]
    fn mac_url_domain() {
        finds("mac 00:1A:2b:3C:4d:5E", "MAC_ADDRESS", "00:1A:2b:3C:4d:5E");
        finds("mac 00-1a-2b-3c-4d-5e.", "MAC_ADDRESS", "00-1a-2b-3c-4d-5e");
        misses("mixed 00:1a-2b:3c:4d:5e", "MAC_ADDRESS");
        finds(
            "see https://example.com/a?b=c.",
            "URL",
            "https://example.com/a?b=c",
        );
        finds(
            "visit shop.example.org for more",
            "DOMAIN_NAME",
            "shop.example.org",
        );
        misses("file report.pdf and main.rs", "DOMAIN_NAME");
        finds(
            "My website is www.jobeconomics.hu",
            "URL",
            "www.jobeconomics.hu",
        );
        finds("shared at www.example.com.ee.", "URL", "www.example.com.ee");
        finds(
            "visit nameimpressions.gl today",
            "DOMAIN_NAME",
            "nameimpressions.gl",
        );
    }

    #[test]
    fn overlaps_keep_the_stronger_span() {
        // The e-mail's domain is not reported again as a domain name.
        assert_eq!(
            types("mail bob@example.com"),
            vec![("EMAIL_ADDRESS", "bob@example.com")]
        );
        // The URL wins over the domain inside it.
        assert_eq!(
            types("https://example.com/x"),
            vec![("URL", "https://example.com/x")]
        );
    }

    #[test]
    fn char_offsets_count_scalars() {
        let text = "Grüße: bob@example.com";
        let s = &recognize(text)[0];
        assert_eq!(char_offsets(text, s.byte_start, s.byte_end), (7, 22));
    }
}
