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
        let mut tok = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| load_err(e.to_string()))?;
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

fn encode_all(
    tok: &Tokenizer,
    texts: &[String],
    truncate: bool,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, PreprocessError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            if text.trim().is_empty() {
                return Err(PreprocessError::Empty { index });
            }
            let enc = tok
                .encode(text.as_str(), true)
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
                // Keep the closing special token ([SEP] for BERT), as the tokenizer's own
                // right-side truncation does for a single sequence.
                let last = *ids
                    .last()
                    .expect("longer than max_len >= 1. This is a bug.");
                ids.truncate(max_len.saturating_sub(1));
                ids.push(last);
            }
            Ok(ids)
        })
        .collect()
}
