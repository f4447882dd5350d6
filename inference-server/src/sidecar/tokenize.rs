//! Tokenization with explicit truncation and pair windows.
//!
//! The tokenizer file's own truncation/padding settings are switched off; we
//! add `[CLS]`/`[SEP]` ourselves so single texts, pairs and sliding windows
//! share one code path and truncation is always reported.

use std::path::Path;

use tokenizers::Tokenizer;

/// Upper bound on windows per pair input (longer contexts are truncated).
pub const MAX_PAIR_WINDOWS: usize = 16;

/// Token ids and byte offsets.
type Pieces = (Vec<u32>, Vec<(usize, usize)>);

/// One model input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Byte range of each token in the text whose tokens matter (the text
    /// itself; the second text for pairs); `None` for special tokens and,
    /// for pairs, the first text's tokens.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Per token: 1 when a line break separates it from the previous token
    /// of the same text (see [`line_starts`]), else 0.
    pub line_starts: Vec<u32>,
    pub truncated: bool,
}

/// Per token of `offsets` (byte ranges in `text`; `None` for special
/// tokens and a pair's first text): 1 when a line break lies between it
/// and the previous token of `text`. The tokenizer drops whitespace, so
/// without this a token head cannot tell "Emilie Nielsen\nWeatherford"
/// (a name, then a company on the next line) from one line of text.
pub fn line_starts(offsets: &[Option<(usize, usize)>], text: &str) -> Vec<u32> {
    let mut prev_end = 0;
    offsets
        .iter()
        .map(|o| match *o {
            Some((s, e)) => {
                let gap = text.get(prev_end.min(s)..s).unwrap_or("");
                prev_end = e;
                u32::from(gap.contains('\n'))
            }
            None => 0,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizeError(pub String);

pub struct Tokenization {
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    max_tokens: usize,
}

impl Tokenization {
    /// Loads `tokenizer.json`; `max_tokens` includes the special tokens.
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self, TokenizeError> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| TokenizeError(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizeError(e.to_string()))?;
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| TokenizeError(format!("{}: no {t} token", path.display())))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        if max_tokens < 8 {
            return Err(TokenizeError(format!(
                "max_tokens {max_tokens} is too small"
            )));
        }
        Ok(Self {
            tokenizer,
            cls,
            sep,
            max_tokens,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Word pieces of `text` without special tokens: ids and byte offsets.
    fn pieces(&self, text: &str) -> Result<Pieces, TokenizeError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizeError(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// `[CLS] text [SEP]`, cut to `max_tokens`.
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizeError> {
        let (mut ids, mut offs) = self.pieces(text)?;
        let room = self.max_tokens - 2;
        let truncated = ids.len() > room;
        ids.truncate(room);
        offs.truncate(room);
        let mut out = Encoded {
            ids: Vec::with_capacity(ids.len() + 2),
            type_ids: vec![0; ids.len() + 2],
            offsets: Vec::with_capacity(ids.len() + 2),
            line_starts: Vec::new(),
            truncated,
        };
        out.ids.push(self.cls);
        out.offsets.push(None);
        out.ids.extend(ids);
        out.offsets.extend(offs.into_iter().map(Some));
        out.ids.push(self.sep);
        out.offsets.push(None);
        out.line_starts = line_starts(&out.offsets, text);
        Ok(out)
    }

    /// `[CLS] first [SEP] second [SEP]` rows. When they do not fit, `second`
    /// is kept whole (cut to half the budget if it alone is too long) and
    /// `first` is covered by windows overlapping by half, at most
    /// [`MAX_PAIR_WINDOWS`] (then `truncated`). Offsets point into `second`.
    pub fn encode_pair(&self, first: &str, second: &str) -> Result<Vec<Encoded>, TokenizeError> {
        let (a_ids, _) = self.pieces(first)?;
        let (mut b_ids, mut b_offs) = self.pieces(second)?;
        let budget = self.max_tokens - 3;
        let mut truncated = false;
        if b_ids.len() > budget / 2 && a_ids.len() + b_ids.len() > budget {
            b_ids.truncate(budget / 2);
            b_offs.truncate(budget / 2);
            truncated = true;
        }
        let window = budget - b_ids.len();
        let stride = (window / 2).max(1);
        let mut starts = vec![0];
        while starts.last().is_some_and(|&s| s + window < a_ids.len()) {
            if starts.len() == MAX_PAIR_WINDOWS {
                truncated = true;
                break;
            }
            starts.push(starts.last().map_or(0, |s| s + stride));
        }
        Ok(starts
            .into_iter()
            .map(|s| {
                let a = &a_ids[s.min(a_ids.len())..(s + window).min(a_ids.len())];
                let mut e = Encoded {
                    ids: Vec::with_capacity(a.len() + b_ids.len() + 3),
                    type_ids: Vec::new(),
                    offsets: Vec::new(),
                    line_starts: Vec::new(),
                    truncated,
                };
                e.ids.push(self.cls);
                e.ids.extend_from_slice(a);
                e.ids.push(self.sep);
                let first_len = e.ids.len();
                e.ids.extend_from_slice(&b_ids);
                e.ids.push(self.sep);
                e.type_ids = (0..e.ids.len())
                    .map(|i| u32::from(i >= first_len))
                    .collect();
                e.offsets = vec![None; first_len];
                e.offsets.extend(b_offs.iter().copied().map(Some));
                e.offsets.push(None);
                e.line_starts = line_starts(&e.offsets, second);
                e
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::line_starts;

    #[test]
    fn line_starts_mark_the_first_token_after_a_break() {
        let text = "Emilie Nielsen\nWeatherford plc\n\n  Slovenčeva 19";
        // [CLS], 5 words as they would be split, [SEP].
        let words = [
            "Emilie",
            "Nielsen",
            "Weatherford",
            "plc",
            "Slovenčeva",
            "19",
        ];
        let mut offsets = vec![None];
        let mut from = 0;
        for w in words {
            let s = from + text[from..].find(w).unwrap();
            offsets.push(Some((s, s + w.len())));
            from = s + w.len();
        }
        offsets.push(None);
        assert_eq!(line_starts(&offsets, text), vec![0, 0, 0, 1, 0, 1, 0, 0]);
        // A leading break marks the first token; special tokens never.
        assert_eq!(
            line_starts(&[None, Some((1, 2)), None], "\nA"),
            vec![0, 1, 0]
        );
        // Offsets out of order or past the text give 0, not a panic.
        assert_eq!(line_starts(&[Some((5, 9)), Some((1, 2))], "ab"), vec![0, 0]);
    }
}
