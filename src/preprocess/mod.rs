//! Request-side preprocessing on its own threads, before enqueue: a pool of tokenizer threads (HF
//! `tokenizers`) turns texts into token ids so that device workers only run tensors. Never touches a
//! device or a queue.
//!
//! The pool is fair across requests: each request waits in a round-robin ring and a free thread
//! takes *one text* from the request at the front, then moves it to the back. A request with 256
//! long texts therefore delays a one-text request sent after it by at most one text per thread,
//! not by its whole batch. A request whose client has left (its future dropped), whose deadline
//! has passed or whose first text failed is not tokenized further. Long texts are tokenized only
//! as far as the limit needs (`encode_text`: the head first, then more only if the head is short).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use crate::tensor::Texts;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("input {index} has {}{tokens} tokens, more than the model's maximum of {max} (set truncate to cut it)", if *.at_least { "at least " } else { "" })]
    TooLong {
        index: usize,
        /// The tokens counted: all of them, or (`at_least`) those of the head of a long text,
        /// which already passed the limit.
        tokens: usize,
        max: usize,
        at_least: bool,
    },
    #[error("input {index} is empty")]
    Empty { index: usize },
    #[error("tokenizer failed on input {index}: {message}")]
    Tokenizer { index: usize, message: String },
    #[error(
        "the tokenizer pool of model '{model}' is busy ({pending} requests waiting); retry later"
    )]
    Busy { model: String, pending: usize },
    #[error("request timed out while its texts were tokenized")]
    Timeout,
    #[error("the tokenizer pool has stopped")]
    Closed,
}

type Reply = oneshot::Sender<Result<Vec<Vec<u32>>, PreprocessError>>;

/// One request's texts, tokenized one at a time by whichever thread takes it next.
struct Request {
    texts: Texts,
    truncate: bool,
    deadline: Option<Instant>,
    /// The next text to hand out (only read and moved under the ring's lock).
    next: AtomicUsize,
    state: Mutex<Progress>,
}

struct Progress {
    ids: Vec<Vec<u32>>,
    done: usize,
    /// `None` once answered (done, failed, timed out) or abandoned by its client.
    reply: Option<Reply>,
}

/// The round-robin ring of requests with texts left to hand out.
#[derive(Default)]
struct Ring {
    ready: VecDeque<Arc<Request>>,
    closed: bool,
    /// Test hooks: threads take nothing while `paused`; texts taken and done (tokenized or
    /// skipped); each request answered with its texts, as (texts, texts tokenized by then).
    #[cfg(test)]
    paused: bool,
    #[cfg(test)]
    settled: usize,
    #[cfg(test)]
    answered: Vec<(usize, usize)>,
}

struct Pool {
    tok: Tokenizer,
    model: String,
    max_len: usize,
    /// Most requests waiting in the ring; more are refused at once (`Busy`).
    max_pending: usize,
    ring: Mutex<Ring>,
    wake: Condvar,
    /// Texts handed to `encode_text` (tests read it).
    tokenized: AtomicUsize,
    /// Test hook: notified when the ring changes.
    #[cfg(test)]
    changed: tokio::sync::Notify,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread's loop: take one text from the request at the front, requeue the request at the
    /// back if it has more, tokenize, repeat; ends when the pool is closed.
    fn run(&self) {
        loop {
            let (req, index) = {
                let mut ring = self.lock();
                loop {
                    if ring.closed {
                        return;
                    }
                    #[cfg(test)]
                    let paused = ring.paused;
                    #[cfg(not(test))]
                    let paused = false;
                    if !paused {
                        if let Some(req) = ring.ready.pop_front() {
                            let index = req.next.fetch_add(1, Ordering::Relaxed);
                            if index + 1 < req.texts.len() {
                                ring.ready.push_back(req.clone());
                            }
                            break (req, index);
                        }
                    }
                    ring = self.wake.wait(ring).unwrap_or_else(|e| e.into_inner());
                }
            };
            let _answered = self.work(&req, index);
            #[cfg(test)]
            {
                let mut ring = self.lock();
                ring.settled += 1;
                if _answered {
                    let n = self.tokenized.load(Ordering::Relaxed);
                    ring.answered.push((req.texts.len(), n));
                }
                drop(ring);
                self.changed.notify_waiters();
            }
        }
    }

    /// Tokenizes text `index` of `req` unless the request is already answered or abandoned, or
    /// past its deadline; answers it when this was its last text or its first failure. True when
    /// this text completed the request.
    fn work(&self, req: &Request, index: usize) -> bool {
        {
            let mut p = req.state.lock().unwrap_or_else(|e| e.into_inner());
            match &p.reply {
                None => return false,
                Some(tx) if tx.is_closed() => {
                    p.reply = None;
                    return false;
                }
                Some(_) => {}
            }
            if req.deadline.is_some_and(|d| Instant::now() >= d) {
                if let Some(tx) = p.reply.take() {
                    let _ = tx.send(Err(PreprocessError::Timeout));
                }
                return false;
            }
        }
        let r = encode_text(
            &self.tok,
            index,
            &req.texts[index],
            req.truncate,
            self.max_len,
        );
        self.tokenized.fetch_add(1, Ordering::Relaxed);
        let mut p = req.state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Err(e) => {
                if let Some(tx) = p.reply.take() {
                    let _ = tx.send(Err(e));
                }
                false
            }
            Ok(ids) => {
                p.ids[index] = ids;
                p.done += 1;
                if p.done < req.texts.len() {
                    return false;
                }
                let ids = std::mem::take(&mut p.ids);
                p.reply.take().is_some_and(|tx| tx.send(Ok(ids)).is_ok())
            }
        }
    }
}

/// Closes the pool (its threads end) when the last `TokenizerPool` handle is dropped.
struct Handles(Arc<Pool>);

impl Drop for Handles {
    fn drop(&mut self) {
        let mut ring = self.0.lock();
        ring.closed = true;
        // Requests still waiting are answered `Closed` as their replies drop.
        ring.ready.clear();
        drop(ring);
        self.0.wake.notify_all();
    }
}

/// Handle onto a model's tokenizer threads; cheap to clone. The threads end when every handle is
/// dropped.
#[derive(Clone)]
pub struct TokenizerPool {
    pool: Arc<Pool>,
    _handles: Arc<Handles>,
}

/// Requests that may wait for the tokenizer threads before new ones are refused.
pub const MAX_PENDING: usize = 1024;

/// The default number of tokenizer threads: the cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        let tok = load_tokenizer(path)?;
        Self::start(tok, model, max_len, threads).map_err(|e| PreprocessError::Load {
            path: path.display().to_string(),
            message: format!("cannot start tokenizer thread: {e}"),
        })
    }

    /// Starts the threads over a loaded tokenizer (`load_tokenizer`).
    pub fn start(
        tok: Tokenizer,
        model: &str,
        max_len: usize,
        threads: usize,
    ) -> std::io::Result<Self> {
        let pool = Arc::new(Pool {
            tok,
            model: model.to_string(),
            max_len,
            max_pending: MAX_PENDING,
            ring: Mutex::new(Ring::default()),
            wake: Condvar::new(),
            tokenized: AtomicUsize::new(0),
            #[cfg(test)]
            changed: tokio::sync::Notify::new(),
        });
        let handles = Arc::new(Handles(pool.clone()));
        for i in 0..threads.max(1) {
            let pool = pool.clone();
            std::thread::Builder::new()
                .name(format!("ferrite-tok-{model}-{i}"))
                .spawn(move || pool.run())?;
        }
        Ok(TokenizerPool {
            pool,
            _handles: handles,
        })
    }

    /// Most tokens per text, special tokens included.
    pub fn max_len(&self) -> usize {
        self.pool.max_len
    }

    /// Token ids of each text, in order.
    pub async fn encode(
        &self,
        texts: Texts,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, PreprocessError> {
        self.encode_until(texts, truncate, None).await
    }

    /// `encode`, given up (`Timeout`) for the texts not started by `deadline`. Refused at once
    /// (`Busy`) when `MAX_PENDING` requests are already waiting. Dropping the future stops the
    /// request's remaining texts from being tokenized.
    pub async fn encode_until(
        &self,
        texts: Texts,
        truncate: bool,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<u32>>, PreprocessError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let n = texts.len();
        let req = Arc::new(Request {
            texts,
            truncate,
            deadline,
            next: AtomicUsize::new(0),
            state: Mutex::new(Progress {
                ids: vec![Vec::new(); n],
                done: 0,
                reply: Some(reply),
            }),
        });
        {
            let mut ring = self.pool.lock();
            if ring.closed {
                return Err(PreprocessError::Closed);
            }
            if ring.ready.len() >= self.pool.max_pending {
                return Err(PreprocessError::Busy {
                    model: self.pool.model.clone(),
                    pending: ring.ready.len(),
                });
            }
            ring.ready.push_back(req);
        }
        #[cfg(test)]
        self.pool.changed.notify_waiters();
        if n > 1 {
            self.pool.wake.notify_all();
        } else {
            self.pool.wake.notify_one();
        }
        rx.await.map_err(|_| PreprocessError::Closed)?
    }

    /// Texts handed to the tokenizer so far (answered or refused).
    pub fn tokenized(&self) -> usize {
        self.pool.tokenized.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn pause(&self, paused: bool) {
        self.pool.lock().paused = paused;
        self.pool.wake.notify_all();
    }

    /// Waits until `done` holds of the ring (checked each time it changes).
    #[cfg(test)]
    async fn wait_for(&self, done: impl Fn(&Ring) -> bool) {
        loop {
            let changed = self.pool.changed.notified();
            futures::pin_mut!(changed);
            changed.as_mut().enable();
            if done(&self.pool.lock()) {
                return;
            }
            changed.await;
        }
    }

    #[cfg(test)]
    async fn wait_queued(&self, n: usize) {
        self.wait_for(|r| r.ready.len() >= n).await
    }

    #[cfg(test)]
    async fn wait_settled(&self, n: usize) {
        self.wait_for(|r| r.settled >= n).await
    }

    #[cfg(test)]
    fn answered(&self) -> Vec<(usize, usize)> {
        self.pool.lock().answered.clone()
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

/// Bytes of a long text tokenized first, per token of the limit: English averages about four
/// characters per WordPiece token, so a head of `max_len * 8` bytes usually yields more than
/// `max_len` tokens, and only a text with unusually long tokens needs a second, larger head.
const HEAD_BYTES_PER_TOKEN: usize = 8;

/// Token ids of text number `index` (special tokens included), cut at `max_len` when `truncate`,
/// else refused when longer. The one place texts are tokenized and truncated (the server's pool and
/// `ferrite quantize` both call it).
///
/// A long text is not tokenized whole: its head, cut at a whitespace (so no word is split), is
/// tokenized first, and when the head alone passes `max_len` tokens the result is the head's,
/// cut: the pre-tokenizer splits at whitespace, so the head's tokens are the text's first tokens
/// and its cut is the text's cut (tested against whole-text tokenization). A head that stays
/// under the limit is doubled until it passes it or is the whole text.
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
    let mut head = max_len.max(1).saturating_mul(HEAD_BYTES_PER_TOKEN);
    loop {
        let (part, whole) = match head_at_whitespace(text, head) {
            Some(h) => (h, false),
            None => (text, true),
        };
        let enc = tok
            .encode(part, true)
            .map_err(|e| PreprocessError::Tokenizer {
                index,
                message: e.to_string(),
            })?;
        let ids = enc.get_ids();
        // A head must pass the limit strictly: its closing special token is not the text's.
        if whole || ids.len() > max_len {
            if ids.len() <= max_len {
                return Ok(ids.to_vec());
            }
            if !truncate {
                return Err(PreprocessError::TooLong {
                    index,
                    tokens: ids.len(),
                    max: max_len,
                    at_least: !whole,
                });
            }
            let mut ids = ids.to_vec();
            truncate_right(&mut ids, max_len);
            return Ok(ids);
        }
        head = head.saturating_mul(2);
    }
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

/// The first bytes of `text` up to about `max` bytes, cut just before a whitespace character;
/// `None` when the text is not longer than `max` or has no whitespace to cut at in that range
/// (the caller then takes the whole text).
fn head_at_whitespace(text: &str, max: usize) -> Option<&str> {
    if text.len() <= max {
        return None;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text[..end].rfind(char::is_whitespace)?;
    // A head of only a few words would mean one enormous word follows: take the whole text.
    (cut >= max / 2).then(|| &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A BERT-style tokenizer (lowercasing normalizer, whitespace-and-punctuation pre-tokenizer,
    /// WordPiece over letters and a few words, [CLS]/[SEP] around each text), so these tests need
    /// no model files.
    fn tokenizer() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        let mut add = |t: String| {
            let id = vocab.len();
            vocab.insert(t, id.into());
        };
        for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", ",", "!"] {
            add(t.into());
        }
        for w in [
            "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "##s", "##ing",
        ] {
            add(w.into());
        }
        for c in 'a'..='z' {
            add(c.to_string());
            add(format!("##{c}"));
        }
        let special = |id: usize, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": vocab},
        });
        json.to_string().parse().expect("test tokenizer")
    }

    /// Whole-text tokenization, cut or refused at the limit: what `encode_text` must equal.
    fn reference(
        tok: &Tokenizer,
        text: &str,
        truncate: bool,
        max_len: usize,
    ) -> Result<Vec<u32>, usize> {
        let mut ids = tok.encode(text, true).unwrap().get_ids().to_vec();
        if ids.len() > max_len {
            if !truncate {
                return Err(ids.len());
            }
            truncate_right(&mut ids, max_len);
        }
        Ok(ids)
    }

    /// A random text: words known and unknown, runs of letters longer than WordPiece's 100-char
    /// word limit, punctuation, accents, CJK, tabs and newlines.
    fn random_text(rng: &mut impl Rng, words: usize) -> String {
        const PIECES: &[&str] = &[
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "lazy",
            "dogs",
            "running",
            "Zebra",
            "naïve",
            "café",
            "日本語",
            "x,y",
            "end.",
            "wow!",
            "\t",
            "\n",
            "  ",
            "ok",
        ];
        let mut s = String::from("ok "); // never blank (a blank text is refused as empty)
        for _ in 0..words {
            if rng.random_ratio(1, 50) {
                let n = rng.random_range(90..130);
                s.extend((0..n).map(|_| rng.random_range(b'a'..=b'z') as char));
            } else {
                s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
            }
            s.push(' ');
        }
        s
    }

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

    #[test]
    fn long_texts_tokenized_by_their_head_equal_whole_text_tokenization() {
        let tok = tokenizer();
        let seed: u64 = rand::rng().random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut heads = 0;
        for case in 0..400 {
            let max_len = [3, 8, 16, 64, 128][case % 5];
            let words = rng.random_range(1..600);
            let text = random_text(&mut rng, words);
            for truncate in [true, false] {
                let got = encode_text(&tok, 0, &text, truncate, max_len);
                let want = reference(&tok, &text, truncate, max_len);
                match (got, want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(g, w, "seed {seed} case {case} truncate {truncate}")
                    }
                    (
                        Err(PreprocessError::TooLong {
                            tokens,
                            max,
                            at_least,
                            ..
                        }),
                        Err(all),
                    ) => {
                        assert_eq!(max, max_len);
                        assert!(tokens > max_len && tokens <= all, "seed {seed} case {case}");
                        if at_least {
                            heads += 1;
                        } else {
                            assert_eq!(tokens, all, "seed {seed} case {case}");
                        }
                    }
                    (g, w) => panic!("seed {seed} case {case} truncate {truncate}: {g:?} vs {w:?}"),
                }
            }
        }
        assert!(
            heads > 50,
            "the head path ran only {heads} times (seed {seed})"
        );
    }

    #[test]
    fn a_huge_text_is_refused_or_cut_from_its_head_alone() {
        let tok = tokenizer();
        let text = "the quick brown fox jumps over the lazy dog ".repeat(200_000); // 8.8 MB
        match encode_text(&tok, 2, &text, false, 256) {
            Err(PreprocessError::TooLong {
                index: 2,
                tokens,
                max: 256,
                at_least: true,
            }) => {
                assert!(
                    tokens < 1000,
                    "only the head was tokenized, got {tokens} tokens"
                )
            }
            other => panic!("{other:?}"),
        }
        let cut = encode_text(&tok, 0, &text, true, 256).unwrap();
        assert_eq!(cut.len(), 256);
        assert_eq!((cut[0], cut[255]), (2, 3), "[CLS] ... [SEP]");
    }

    fn pool(threads: usize) -> TokenizerPool {
        let p = TokenizerPool::start(tokenizer(), "t", 64, threads).unwrap();
        p.pause(true);
        p
    }

    fn texts(n: usize, word: &str) -> Texts {
        (0..n).map(|i| format!("{word} {i}")).collect()
    }

    #[tokio::test]
    async fn a_small_request_is_served_after_one_text_of_a_large_one() {
        let p = pool(1);
        let big = tokio::spawn({
            let p = p.clone();
            async move { p.encode(texts(200, "the quick brown fox"), false).await }
        });
        p.wait_queued(1).await;
        let small = tokio::spawn({
            let p = p.clone();
            async move { p.encode(texts(1, "lazy dog"), false).await }
        });
        p.wait_queued(2).await;
        p.pause(false);
        assert_eq!(small.await.unwrap().unwrap().len(), 1);
        assert_eq!(big.await.unwrap().unwrap().len(), 200);
        p.wait_settled(201).await;
        let answered = p.answered();
        assert_eq!(
            answered,
            vec![(1, 2), (200, 201)],
            "(texts, texts tokenized when answered): one text of the big request, then the small one"
        );
    }

    #[tokio::test]
    async fn texts_of_a_client_that_left_are_not_tokenized() {
        let p = pool(1);
        {
            let gone = p.encode(texts(50, "fox"), false);
            futures::pin_mut!(gone);
            assert!(futures::poll!(gone.as_mut()).is_pending());
            p.wait_queued(1).await;
        } // dropped: the client left
        let live = p.encode(texts(3, "dog"), false);
        p.pause(false);
        assert_eq!(live.await.unwrap().len(), 3);
        p.wait_settled(53).await;
        assert_eq!(
            p.tokenized(),
            3,
            "none of the 50 abandoned texts was tokenized"
        );
    }

    #[tokio::test]
    async fn the_first_failure_answers_the_request_and_stops_its_other_texts() {
        let p = pool(1);
        let all = texts(20, "fox");
        let mut t: Vec<&str> = all.iter().collect();
        t[1] = "   ";
        let t: Texts = t.into_iter().collect();
        let r = tokio::spawn({
            let p = p.clone();
            async move { p.encode(t, false).await }
        });
        p.wait_queued(1).await;
        p.pause(false);
        assert_eq!(r.await.unwrap(), Err(PreprocessError::Empty { index: 1 }));
        p.wait_settled(20).await;
        assert_eq!(
            p.tokenized(),
            2,
            "only the text before the failure and the failing one ran"
        );
    }

    #[tokio::test]
    async fn a_passed_deadline_times_the_request_out_without_tokenizing() {
        let p = pool(2);
        let r = tokio::spawn({
            let p = p.clone();
            async move {
                p.encode_until(texts(10, "fox"), false, Some(Instant::now()))
                    .await
            }
        });
        p.wait_queued(1).await;
        p.pause(false);
        assert_eq!(r.await.unwrap(), Err(PreprocessError::Timeout));
        p.wait_settled(10).await;
        assert_eq!(p.tokenized(), 0);
    }

    #[tokio::test]
    async fn a_full_ring_refuses_at_once_and_a_dropped_pool_answers_closed() {
        let p = pool(1);
        let waiting: Vec<_> = (0..MAX_PENDING)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.encode(texts(1, "fox"), false).await })
            })
            .collect();
        p.wait_queued(MAX_PENDING).await;
        match p.encode(texts(1, "dog"), false).await {
            Err(PreprocessError::Busy { pending, .. }) => assert_eq!(pending, MAX_PENDING),
            other => panic!("{other:?}"),
        }
        p.pause(false);
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn every_text_comes_back_in_order_over_several_threads() {
        let p = pool(3);
        let all: Vec<_> = (0..8)
            .map(|r| {
                let p = p.clone();
                let t = texts(1 + r * 7, "jumps over");
                tokio::spawn(async move { (p.encode(t.clone(), true).await, t) })
            })
            .collect();
        p.wait_queued(8).await;
        p.pause(false);
        let tok = tokenizer();
        for h in all {
            let (got, t) = h.await.unwrap();
            let want: Vec<Vec<u32>> = t
                .iter()
                .map(|s| reference(&tok, s, true, 64).unwrap())
                .collect();
            assert_eq!(got.unwrap(), want);
        }
    }
}
