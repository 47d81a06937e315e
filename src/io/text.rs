//! Text records: a Hugging Face `tokenizer.json` turning each record's text into token ids, with
//! truncation at the pipeline's `max_tokens` and no padding (tokens stay packed, so padding would
//! only be computed and thrown away). This is what sentence-transformers does: `tokenizer.json`
//! files often store a fixed padding and a shorter truncation, which are overridden here.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

/// A loaded tokenizer, set up for one pipeline.
#[derive(Debug)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_tokens: usize,
}

impl TextTokenizer {
    /// Load `path`, truncating at `max_tokens` tokens (special tokens included).
    pub fn load(path: &Path, max_tokens: usize) -> Result<TextTokenizer, String> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| format!("cannot load tokenizer {}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| format!("tokenizer {}: {e}", path.display()))?;
        Ok(TextTokenizer {
            tokenizer,
            max_tokens,
        })
    }

    /// The ids of `text`, special tokens included, at most `max_tokens` of them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("cannot tokenize: {e}"))?;
        let ids = encoding.get_ids();
        debug_assert!(ids.len() <= self.max_tokens);
        Ok(ids.to_vec())
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// Tokens a line can become at most, judged from its bytes before it is tokenized: a WordPiece
/// or BPE token covers at least one byte of text, plus a few special tokens. The chunker uses
/// this to keep a chunk within its token budget without tokenizing.
pub fn token_estimate(line_bytes: usize, max_tokens: usize) -> usize {
    (line_bytes + SPECIAL_TOKENS).min(max_tokens)
}

/// Special tokens a tokenizer may add around one text (`[CLS]` and `[SEP]` for BERT; room for a
/// few more).
const SPECIAL_TOKENS: usize = 4;
