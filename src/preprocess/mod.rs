//! Request-side preprocessing on its own threads, before enqueue: a pool of tokenizer threads (HF
//! `tokenizers`) turns texts into token ids so that device workers only run tensors. Never touches a
//! device or a queue.

use std::path::Path;

use tokenizers::Tokenizer;
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("input {index} has {tokens} tokens, more than the model's maximum of {max} (set truncate to cut it)")]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index} is empty")]
    Empty { index: usize },
    #[error("tokenizer failed on input {index}: {message}")]
    Tokenizer { index: usize, message: String },
    #[error("the tokenizer pool has stopped")]
    Closed,
}

struct Work {
    texts: Vec<String>,
    truncate: bool,
    reply: oneshot::Sender<Result<Vec<Vec<u32>>, PreprocessError>>,
}

/// Handle onto a model's tokenizer threads; cheap to clone. The threads end when every handle is
/// dropped.
#[derive(Clone)]
pub struct TokenizerPool {
    tx: flume::Sender<Work>,
    max_len: usize,
}

impl TokenizerPool {
    /// Loads `tokenizer.json` and starts `threads` named threads (`ferrite-tok-{model}-{i}`). Texts
    /// are cut (or refused) at `max_len` tokens, special tokens included.
    pub fn load(
        path: &Path,
        model: &str,
        max_len: usize,
        threads: usize,
    ) -> Result<Self, PreprocessError> {
        let load_err = |message: String| PreprocessError::Load {
            path: path.display().to_string(),
            message,
        };
        let tok = load_tokenizer(path)?;
        let (tx, rx) = flume::bounded::<Work>(1024);
        for i in 0..threads.max(1) {
            let (tok, rx) = (tok.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("ferrite-tok-{model}-{i}"))
                .spawn(move || {
                    while let Ok(w) = rx.recv() {
                        let _ = w
                            .reply
                            .send(encode_all(&tok, &w.texts, w.truncate, max_len));
                    }
                })
                .map_err(|e| load_err(format!("cannot start tokenizer thread: {e}")))?;
        }
        Ok(TokenizerPool { tx, max_len })
    }

    /// Most tokens per text, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of each text, in order.
    pub async fn encode(
        &self,
        texts: Vec<String>,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, PreprocessError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send_async(Work {
                texts,
                truncate,
                reply,
            })
            .await
            .map_err(|_| PreprocessError::Closed)?;
        rx.await.map_err(|_| PreprocessError::Closed)?
    }
}

/// Loads a Hugging Face `tokenizer.json` set up to encode one text at a time, unpadded (a
/// `tokenizer.json` may pad to a fixed length by default) and untruncated (`encode_text` truncates).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, PreprocessError> {
    let load_err = |message: String| PreprocessError::Load {
        path: path.display().to_string(),
        message,
    };
    let mut tok = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| load_err(e.to_string()))?;
    Ok(tok)
}

fn encode_all(
    tok: &Tokenizer,
    texts: &[String],
    truncate: bool,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, PreprocessError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| encode_text(tok, index, text, truncate, max_len))
        .collect()
}

/// Token ids of text number `index` (special tokens included), cut at `max_len` when `truncate`,
/// else refused when longer. The one place texts are tokenized and truncated (the server's pool and
/// `ferrite quantize` both call it).
pub fn encode_text(
    tok: &Tokenizer,
    index: usize,
    text: &str,
    truncate: bool,
    max_len: usize,
) -> Result<Vec<u32>, PreprocessError> {
    if text.trim().is_empty() {
        return Err(PreprocessError::Empty { index });
    }
    let enc = tok
        .encode(text, true)
        .map_err(|e| PreprocessError::Tokenizer {
            index,
            message: e.to_string(),
        })?;
    let mut ids = enc.get_ids().to_vec();
    if ids.len() > max_len {
        if !truncate {
            return Err(PreprocessError::TooLong {
                index,
                tokens: ids.len(),
                max: max_len,
            });
        }
        truncate_right(&mut ids, max_len);
    }
    Ok(ids)
}

/// Cuts `ids` to `max_len` (>= 1) on the right, keeping the closing special token ([SEP] for
/// BERT), as the tokenizer's own right-side truncation does for a single sequence.
pub fn truncate_right(ids: &mut Vec<u32>, max_len: usize) {
    if ids.len() <= max_len {
        return;
    }
    let last = *ids.last().expect("longer than max_len. This is a bug.");
    ids.truncate(max_len.max(1) - 1);
    ids.push(last);
}

#[cfg(test)]
mod tests {
    use super::truncate_right;

    #[test]
    fn truncate_right_keeps_the_closing_token_and_length() {
        let mut ids = vec![101, 7, 8, 9, 10, 102];
        truncate_right(&mut ids, 4);
        assert_eq!(ids, vec![101, 7, 8, 102]);
        let mut short = vec![101, 102];
        truncate_right(&mut short, 4);
        assert_eq!(short, vec![101, 102], "short sequences are untouched");
        let mut one = vec![101, 5, 102];
        truncate_right(&mut one, 1);
        assert_eq!(one, vec![102]);
    }
}
