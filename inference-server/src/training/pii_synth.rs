//! Synthetic `pii` sentences from presidio-research's generator material
//! (`presidio_evaluator/data_generator/raw_data/`): its 200-odd sentence
//! templates (`{{person}}`, `{{address}}`, …) filled with its fake
//! identities, organisations and nationalities, and with numbers we
//! generate valid by construction (Luhn cards, mod-97 IBANs, SSNs in the
//! issued ranges), so every type of the brief has training sentences.
//!
//! Each filled placeholder becomes a gold span under its served type, or no
//! span for placeholders that are not PII here (job titles, `Mr.`).
//! Sentences of one template share a split group, so validation templates
//! are never trained on.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};

use super::token_data::{merge_address_parts, Span, TokenExample};
use super::Rng;

/// Folder of the raw material under the `pii` data folder.
pub const RAW_DIR: &str = "presidio_research/presidio_evaluator/data_generator/raw_data";

/// Short source name of generated sentences.
pub const SOURCE: &str = "presidio_templates";

/// One fake person (a FakeNameGenerator row).
#[derive(Debug, Clone)]
struct Identity {
    given: String,
    middle: String,
    surname: String,
    female: bool,
    title: String,
    street: String,
    city: String,
    state: String,
    zip: String,
    country: String,
    email: String,
    phone: String,
    phone_cc: String,
    birthday: String,
    age: String,
    company: String,
    domain: String,
    job: String,
}

/// The generator's value lists.
pub struct Material {
    templates: Vec<String>,
    people: Vec<Identity>,
    organizations: Vec<String>,
    /// (adjective, woman, plural) per nationality.
    nationalities: Vec<(String, String, String)>,
    licenses: Vec<String>,
}

fn read(dir: &Path, file: &str) -> anyhow::Result<String> {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

/// A one-column file: the lines after its `header`, quotes removed (some
/// organisation names hold unquoted commas, so it is not read as CSV).
fn lines(dir: &Path, file: &str, header: &str) -> anyhow::Result<Vec<String>> {
    let text = read(dir, file)?;
    let mut it = text.lines();
    if it.next().map(str::trim) != Some(header) {
        bail!("{file}: the first line is not `{header}`");
    }
    Ok(it
        .map(|l| l.trim().trim_matches('"').trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Template lines write line breaks as `\n` (and escape a few characters
/// with `\`), as presidio's generator reads them: `\n` becomes a line
/// break, `\t` a tab, `\X` the character X.
fn unescape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

impl Material {
    /// Reads the raw-material folder (`RAW_DIR` under the `pii` folder).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let templates: Vec<String> = read(dir, "templates.txt")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(unescape)
            .collect();
        let people_rows =
            super::csv::parse_with_header(&read(dir, "FakeNameGenerator.com_3000.csv")?, ',')?;
        let get = |r: &HashMap<String, String>, k: &str| -> anyhow::Result<String> {
            r.get(k)
                .map(|v| v.trim().to_string())
                .with_context(|| format!("FakeNameGenerator.com_3000.csv: no column `{k}`"))
        };
        let mut people = Vec::with_capacity(people_rows.len());
        for r in &people_rows {
            let p = Identity {
                given: get(r, "GivenName")?,
                middle: get(r, "MiddleInitial")?,
                surname: get(r, "Surname")?,
                female: get(r, "Gender")? == "female",
                title: get(r, "Title")?,
                street: get(r, "StreetAddress")?,
                city: get(r, "City")?,
                state: get(r, "State")?,
                zip: get(r, "ZipCode")?,
                country: get(r, "CountryFull")?,
                email: get(r, "EmailAddress")?,
                phone: get(r, "TelephoneNumber")?,
                phone_cc: get(r, "TelephoneCountryCode")?,
                birthday: get(r, "Birthday")?,
                age: get(r, "Age")?,
                company: get(r, "Company")?,
                domain: get(r, "Domain")?,
                job: get(r, "Occupation")?,
            };
            if !p.given.is_empty() && !p.surname.is_empty() && !p.street.is_empty() {
                people.push(p);
            }
        }
        let organizations = lines(dir, "companies_and_organizations.csv", "organization")?;
        let nat = super::csv::parse_with_header(&read(dir, "nationalities.csv")?, ',')?;
        let cap = |s: &str| {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        };
        let nationalities = nat
            .iter()
            .filter_map(|r| {
                let g = |k: &str| r.get(k).map(|v| cap(v.trim()));
                Some((g("nationality")?, g("woman")?, g("plural")?))
            })
            .filter(|(a, _, _)| !a.is_empty())
            .collect::<Vec<_>>();
        let licenses = lines(dir, "us_driver_licenses.csv", "us_driver_license")?;
        if templates.is_empty()
            || people.is_empty()
            || organizations.is_empty()
            || nationalities.is_empty()
            || licenses.is_empty()
        {
            bail!("{}: a raw-material file is empty", dir.display());
        }
        Ok(Self {
            templates,
            people,
            organizations,
            nationalities,
            licenses,
        })
    }

    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// `per_template` sentences for every template, seeded.
    pub fn generate(&self, per_template: usize, seed: u64) -> anyhow::Result<Vec<TokenExample>> {
        let mut rng = Rng::new(seed ^ 0x5EED_0F11);
        let mut out = Vec::with_capacity(self.templates.len() * per_template);
        for (t, template) in self.templates.iter().enumerate() {
            for _ in 0..per_template {
                let (text, gold) = self.fill(template, &mut rng)?;
                out.push(TokenExample {
                    first: None,
                    text,
                    gold,
                    group: format!("{SOURCE}:{t}"),
                    source: SOURCE,
                });
            }
        }
        Ok(out)
    }

    /// One sentence from `template`: text and gold spans (served types).
    fn fill(&self, template: &str, rng: &mut Rng) -> anyhow::Result<(String, Vec<Span>)> {
        let person = pick(&self.people, rng).clone();
        let mut text = String::with_capacity(template.len() + 64);
        let mut spans = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            text.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .with_context(|| format!("unclosed placeholder in template {template:?}"))?;
            let name = after[..close].trim();
            let (value, kind) = self.value(name, &person, rng)?;
            let start = text.len();
            text.push_str(&value);
            if let Some(kind) = kind {
                spans.push(Span {
                    start,
                    end: text.len(),
                    kind: kind.to_string(),
                });
            }
            rest = &after[close + 2..];
        }
        text.push_str(rest);
        // Address parts next to each other become one address, as presidio
        // labels a whole address.
        let spans = merge_address_parts(&text, spans);
        Ok((text, spans))
    }

    /// The value of one placeholder and its served type (`None`: not PII).
    fn value(
        &self,
        name: &str,
        p: &Identity,
        rng: &mut Rng,
    ) -> anyhow::Result<(String, Option<&'static str>)> {
        let other = pick(&self.people, rng);
        let of_gender = |female: bool, rng: &mut Rng| -> String {
            let mut who = pick(&self.people, rng);
            for _ in 0..8 {
                if who.female == female {
                    break;
                }
                who = pick(&self.people, rng);
            }
            who.given.clone()
        };
        Ok(match name {
            "person" | "name" => (full_name(p, rng), Some("PERSON")),
            "name_female" => (
                format!("{} {}", of_gender(true, rng), other.surname),
                Some("PERSON"),
            ),
            "name_male" => (
                format!("{} {}", of_gender(false, rng), other.surname),
                Some("PERSON"),
            ),
            "first_name" | "first_name_nonbinary" => (p.given.clone(), Some("PERSON")),
            "first_name_female" => (of_gender(true, rng), Some("PERSON")),
            "first_name_male" => (of_gender(false, rng), Some("PERSON")),
            "last_name" | "last_name_female" | "last_name_male" => {
                (p.surname.clone(), Some("PERSON"))
            }
            "prefix" => (p.title.clone(), None),
            "prefix_female" => (pick(&["Mrs.", "Ms.", "Miss", "Dr."], rng).to_string(), None),
            "prefix_male" => (pick(&["Mr.", "Dr.", "Sir"], rng).to_string(), None),
            "job" => (p.job.clone(), None),
            "organization" => {
                let org = if rng.next_f64() < 0.5 {
                    p.company.clone()
                } else {
                    pick(&self.organizations, rng).clone()
                };
                (org, Some("ORGANIZATION"))
            }
            "city" => (p.city.clone(), Some("GPE")),
            "country" => (p.country.clone(), Some("GPE")),
            "state_abbr" => (p.state.clone(), Some("GPE")),
            "address" => (address(p, rng), Some("STREET_ADDRESS")),
            "street_name" => (street_name(&p.street).to_string(), Some("STREET_ADDRESS")),
            "building_number" => (building_number(&p.street, rng), Some("STREET_ADDRESS")),
            "secondary_address" => (
                format!(
                    "{} {}",
                    pick(&["Apt.", "Suite", "Unit", "Flat"], rng),
                    1 + rng.next_u64() % 400
                ),
                Some("STREET_ADDRESS"),
            ),
            "postcode" | "zipcode" => (p.zip.clone(), Some("ZIP_CODE")),
            "age" => (p.age.clone(), Some("AGE")),
            "nationality" => (pick(&self.nationalities, rng).0.clone(), Some("NRP")),
            "nation_woman" => (pick(&self.nationalities, rng).1.clone(), Some("NRP")),
            "nation_plural" => (pick(&self.nationalities, rng).2.clone(), Some("NRP")),
            "credit_card_number" => (credit_card(rng), Some("CREDIT_CARD")),
            "phone_number" => (phone(p, rng), Some("PHONE_NUMBER")),
            "email" => (p.email.clone(), Some("EMAIL_ADDRESS")),
            "url" => (
                format!(
                    "{}{}",
                    pick(&["https://", "http://www.", "www.", "https://www."], rng),
                    p.domain.to_lowercase()
                ),
                Some("URL"),
            ),
            "iban" => (iban(rng), Some("IBAN_CODE")),
            "ssn" => (ssn(rng), Some("US_SSN")),
            "ip_address" => (ip(rng), Some("IP_ADDRESS")),
            "us_driver_license" => (pick(&self.licenses, rng).clone(), Some("US_DRIVER_LICENSE")),
            "date_time" => (date_time(rng), Some("DATE_TIME")),
            "date_of_birth" => (date_of_birth(p, rng), Some("DATE_TIME")),
            "year" => ((1950 + rng.next_u64() % 75).to_string(), Some("DATE_TIME")),
            "day_of_week" => (pick(&WEEKDAYS, rng).to_string(), Some("DATE_TIME")),
            other => bail!("unknown template placeholder `{{{{{other}}}}}`"),
        })
    }
}

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn pick<'a, T>(v: &'a [T], rng: &mut Rng) -> &'a T {
    &v[(rng.next_u64() % v.len() as u64) as usize]
}

fn full_name(p: &Identity, rng: &mut Rng) -> String {
    match rng.next_u64() % 6 {
        0 if !p.middle.is_empty() => format!("{} {}. {}", p.given, p.middle, p.surname),
        1 => p.given.clone(),
        _ => format!("{} {}", p.given, p.surname),
    }
}

/// The street without a leading house number ("4 Elm St" → "Elm St").
fn street_name(street: &str) -> &str {
    match street.split_once(' ') {
        Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => street,
    }
}

fn building_number(street: &str, rng: &mut Rng) -> String {
    match street.split_once(' ') {
        Some((n, _)) if n.chars().all(|c| c.is_ascii_digit()) => n.to_string(),
        _ => (1 + rng.next_u64() % 2000).to_string(),
    }
}

fn address(p: &Identity, rng: &mut Rng) -> String {
    match rng.next_u64() % 4 {
        0 => format!("{}, {}, {} {}", p.street, p.city, p.state, p.zip),
        1 => format!("{}, {} {}, {}", p.street, p.zip, p.city, p.country),
        2 => format!("{}\n{}, {} {}", p.street, p.city, p.state, p.zip),
        _ => format!("{}, {}", p.street, p.city),
    }
}

fn phone(p: &Identity, rng: &mut Rng) -> String {
    let d = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b'0' + (rng.next_u64() % 10) as u8))
            .collect()
    };
    match rng.next_u64() % 4 {
        0 if !p.phone_cc.is_empty() => format!("+{} {}", p.phone_cc, p.phone),
        1 => format!(
            "({}) {}-{}",
            200 + rng.next_u64() % 800,
            d(rng, 3),
            d(rng, 4)
        ),
        2 => format!(
            "+1-{}-{}-{}",
            200 + rng.next_u64() % 800,
            d(rng, 3),
            d(rng, 4)
        ),
        _ => format!("{}-{}-{}", 200 + rng.next_u64() % 800, d(rng, 3), d(rng, 4)),
    }
}

/// Luhn check digit for `digits` (the payload without it).
pub fn luhn_digit(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// A Luhn-valid Visa, Mastercard or Amex number, grouped as printed.
fn credit_card(rng: &mut Rng) -> String {
    let (prefix, len): (&[u8], usize) = match rng.next_u64() % 3 {
        0 => (&[4], 16),
        1 => (&[5, 1 + (rng.next_u64() % 5) as u8], 16),
        _ => (&[3, 7], 15),
    };
    let mut d: Vec<u8> = prefix.to_vec();
    while d.len() < len - 1 {
        d.push((rng.next_u64() % 10) as u8);
    }
    d.push(luhn_digit(&d));
    let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
    let sep = pick(&[" ", "-", ""], rng);
    if sep.is_empty() {
        return s;
    }
    let groups: &[usize] = if len == 15 { &[4, 6, 5] } else { &[4, 4, 4, 4] };
    let mut out = Vec::new();
    let mut at = 0;
    for g in groups {
        out.push(&s[at..at + g]);
        at += g;
    }
    out.join(sep)
}

/// IBAN check digits for country `cc` and account part `bban` (mod 97).
pub fn iban_check(cc: &str, bban: &str) -> u32 {
    let moved = format!("{bban}{cc}00");
    let mut rem = 0u32;
    for c in moved.chars() {
        let v = if c.is_ascii_digit() {
            c as u32 - '0' as u32
        } else {
            c.to_ascii_uppercase() as u32 - 'A' as u32 + 10
        };
        for digit in v.to_string().chars() {
            rem = (rem * 10 + (digit as u32 - '0' as u32)) % 97;
        }
    }
    98 - rem
}

fn iban(rng: &mut Rng) -> String {
    let digits = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b'0' + (rng.next_u64() % 10) as u8))
            .collect()
    };
    let letters = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b'A' + (rng.next_u64() % 26) as u8))
            .collect()
    };
    let (cc, bban) = match rng.next_u64() % 4 {
        0 => ("DE", digits(rng, 18)),
        1 => ("GB", format!("{}{}", letters(rng, 4), digits(rng, 14))),
        2 => ("FR", digits(rng, 23)),
        _ => ("NL", format!("{}{}", letters(rng, 4), digits(rng, 10))),
    };
    let plain = format!("{cc}{:02}{bban}", iban_check(cc, &bban));
    if rng.next_f64() < 0.5 {
        plain
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        plain
    }
}

/// An SSN in the issued ranges: area 001–899 but not 666, group 01–99,
/// serial 0001–9999.
fn ssn(rng: &mut Rng) -> String {
    let mut area = 1 + rng.next_u64() % 899;
    if area == 666 {
        area = 665;
    }
    let group = 1 + rng.next_u64() % 99;
    let serial = 1 + rng.next_u64() % 9999;
    let sep = pick(&["-", "-", " "], rng);
    format!("{area:03}{sep}{group:02}{sep}{serial:04}")
}

fn ip(rng: &mut Rng) -> String {
    if rng.next_f64() < 0.8 {
        format!(
            "{}.{}.{}.{}",
            1 + rng.next_u64() % 223,
            rng.next_u64() % 256,
            rng.next_u64() % 256,
            1 + rng.next_u64() % 254
        )
    } else {
        let groups: Vec<String> = (0..8)
            .map(|_| format!("{:x}", rng.next_u64() % 0x10000))
            .collect();
        groups.join(":")
    }
}

fn date_time(rng: &mut Rng) -> String {
    let (y, m, d) = (
        1990 + rng.next_u64() % 36,
        rng.next_u64() % 12,
        1 + rng.next_u64() % 28,
    );
    match rng.next_u64() % 5 {
        0 => format!("{} {d}, {y}", MONTHS[m as usize]),
        1 => format!("{d} {} {y}", MONTHS[m as usize]),
        2 => format!("{y}-{:02}-{d:02}", m + 1),
        3 => format!(
            "{} {d} at {}:{:02}",
            MONTHS[m as usize],
            1 + rng.next_u64() % 12,
            rng.next_u64() % 60
        ),
        _ => format!("{}/{d}/{y}", m + 1),
    }
}

fn date_of_birth(p: &Identity, rng: &mut Rng) -> String {
    // FakeNameGenerator birthdays are m/d/yyyy.
    let parts: Vec<&str> = p.birthday.split('/').collect();
    match (parts.as_slice(), rng.next_u64() % 3) {
        ([m, d, y], 0) => match m.parse::<usize>() {
            Ok(mi) if (1..=12).contains(&mi) => format!("{} {d}, {y}", MONTHS[mi - 1]),
            _ => p.birthday.clone(),
        },
        ([m, d, y], 1) => format!("{y}-{:0>2}-{:0>2}", m, d),
        _ => p.birthday.clone(),
    }
}

/// The generated sentences of the `pii` folder `root`, or `None` when it has
/// no raw material (the other sources still train).
pub fn load(
    root: &Path,
    per_template: usize,
    seed: u64,
) -> anyhow::Result<Option<(Vec<TokenExample>, std::path::PathBuf)>> {
    let dir = root.join(RAW_DIR);
    if !dir.join("templates.txt").is_file() {
        return Ok(None);
    }
    let m = Material::load(&dir)?;
    Ok(Some((m.generate(per_template, seed)?, dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn_ok(s: &str) -> bool {
        let d: Vec<u8> = s
            .chars()
            .filter(char::is_ascii_digit)
            .map(|c| c as u8 - b'0')
            .collect();
        let (payload, check) = d.split_at(d.len() - 1);
        luhn_digit(payload) == check[0]
    }

    #[test]
    fn generated_numbers_are_valid() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            assert!(luhn_ok(&credit_card(&mut rng)));
            let i: String = iban(&mut rng).split_whitespace().collect();
            assert_eq!(
                iban_check(&i[..2], &i[4..]),
                i[2..4].parse::<u32>().unwrap(),
                "{i}"
            );
            let s: Vec<u32> = ssn(&mut rng)
                .split(['-', ' '])
                .map(|x| x.parse().unwrap())
                .collect();
            assert!((1..900).contains(&s[0]) && s[0] != 666 && s[1] >= 1 && s[2] >= 1);
        }
        // Known values: 4111 1111 1111 1111 (Luhn), GB82 WEST 1234 5698 7654 32 (mod 97).
        assert_eq!(
            luhn_digit(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            1
        );
        assert_eq!(iban_check("GB", "WEST12345698765432"), 82);
    }

    fn material() -> Material {
        let person = |given: &str, female: bool| Identity {
            given: given.into(),
            middle: "J".into(),
            surname: "Hamanová".into(),
            female,
            title: "Mrs.".into(),
            street: "42 Elm Street".into(),
            city: "Vila Real".into(),
            state: "VR".into(),
            zip: "5000-047".into(),
            country: "Portugal".into(),
            email: "marie@example.com".into(),
            phone: "84 23 30".into(),
            phone_cc: "299".into(),
            birthday: "3/29/1982".into(),
            age: "37".into(),
            company: "Formula Gray".into(),
            domain: "LostMillions.com.pt".into(),
            job: "Surveillance officer".into(),
        };
        Material {
            templates: vec![
                "My name is {{person}} and I live at {{building_number}} {{street_name}}, {{city}}.".into(),
                "I am {{age}}, {{nationality}}, working at {{organization}} ({{job}}).".into(),
            ],
            people: vec![person("Marie", true), person("Karl", false)],
            organizations: vec!["ABN AMRO Group NV".into()],
            nationalities: vec![("Algerian".into(), "Algerian".into(), "Algerians".into())],
            licenses: vec!["S530-460-99-424-0".into()],
        }
    }

    #[test]
    fn template_escapes_become_characters() {
        assert_eq!(
            unescape(r"{{person}}\n{{city}}\, ok\tx \\"),
            "{{person}}\n{{city}}, ok\tx \\"
        );
    }

    #[test]
    fn spans_cover_the_filled_values_and_addresses_merge() {
        let m = material();
        let ex = m.generate(20, 7).unwrap();
        assert_eq!(ex.len(), 40);
        for e in &ex {
            for s in &e.gold {
                let piece = &e.text[s.start..s.end];
                assert_eq!(piece.trim(), piece, "{piece:?} in {:?}", e.text);
                assert!(!piece.is_empty());
            }
        }
        let first = &ex[0];
        let kinds: Vec<&str> = first.gold.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["PERSON", "STREET_ADDRESS"], "{:?}", first.text);
        let addr = &first.gold[1];
        assert_eq!(
            &first.text[addr.start..addr.end],
            "42 Elm Street, Vila Real"
        );
        let second = &ex[20];
        let kinds: Vec<&str> = second.gold.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["AGE", "NRP", "ORGANIZATION"], "{:?}", second.text);
        assert!(second.text.contains("(Surveillance officer)"));
        assert_eq!(first.group, format!("{SOURCE}:0"));
        assert_eq!(second.group, format!("{SOURCE}:1"));
        // Seeded: the same sentences again.
        let again = m.generate(20, 7).unwrap();
        assert_eq!(again[5].text, ex[5].text);
    }

    #[test]
    fn unknown_placeholders_are_errors() {
        let mut m = material();
        m.templates = vec!["Hello {{nickname}}".into()];
        let err = m.generate(1, 1).unwrap_err().to_string();
        assert!(err.contains("{{nickname}}"), "{err}");
    }
}
