//! A small RFC 4180 reader for the training data's CSV/TSV files: quoted
//! fields may hold the separator, newlines and doubled quotes (`""`).

use anyhow::bail;

/// Parses `text` into records of fields. Empty lines between records are
/// skipped; a `\r` before a record's `\n` is dropped.
pub fn parse(text: &str, sep: char) -> anyhow::Result<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    // Whether the current field started with a quote (then text after its
    // closing quote is an error) / has any content.
    let mut quoted = false;
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => {
                in_quotes = true;
                quoted = true;
            }
            c if c == sep => {
                record.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                line += 1;
                if !(record.is_empty() && field.is_empty() && !quoted) {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                quoted = false;
            }
            _ if quoted => bail!("line {line}: text after a closing quote"),
            _ => field.push(c),
        }
    }
    if in_quotes {
        bail!("line {line}: unterminated quoted field");
    }
    if !(record.is_empty() && field.is_empty() && !quoted) {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// Records as maps from the header's column names; fails on a record whose
/// field count differs from the header's.
pub fn parse_with_header(
    text: &str,
    sep: char,
) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
    let mut rows = parse(text, sep)?.into_iter();
    let Some(header) = rows.next() else {
        return Ok(Vec::new());
    };
    rows.enumerate()
        .map(|(n, r)| {
            if r.len() != header.len() {
                bail!(
                    "record {}: {} fields, the header has {}",
                    n + 1,
                    r.len(),
                    header.len()
                );
            }
            Ok(header.iter().cloned().zip(r).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_hold_separators_newlines_and_quotes() {
        let t = "a,b\r\n\"x, \"\"y\"\"\nz\",2\n\nplain,\"\"\n";
        let r = parse(t, ',').unwrap();
        assert_eq!(
            r,
            vec![
                vec!["a".to_string(), "b".into()],
                vec!["x, \"y\"\nz".into(), "2".into()],
                vec!["plain".into(), "".into()],
            ]
        );
    }

    #[test]
    fn header_maps_and_errors() {
        let rows = parse_with_header("q\tl\nhi there\tjoy\n", '\t').unwrap();
        assert_eq!(rows[0]["q"], "hi there");
        assert_eq!(rows[0]["l"], "joy");
        assert!(parse_with_header("a,b\n1\n", ',').is_err());
        assert!(parse("\"open", ',').is_err());
        assert!(parse("\"a\"b,c", ',').is_err());
        // No trailing newline.
        assert_eq!(parse("1,2", ',').unwrap(), vec![vec!["1", "2"]]);
    }
}
