//! Ground truth: recent predictions by id (a bounded store with a TTL) joined with posted labels,
//! and the accuracy over the last labelled rows. Pure: the monitor thread owns it and passes the
//! clock in.
//!
//! An id is kept for `2 x ttl` (or until `max_ids` newer ones push it out): feedback within `ttl`
//! joins, later feedback is counted `late`, for an id never seen (or long gone) `unknown`. A repeated
//! id replaces the older prediction and its feedback is counted `ambiguous` (it still updates the
//! accuracy, against the newer prediction). A second label for an id already labelled is counted
//! `duplicate` and ignored; a label list whose length differs from the prediction's rows `invalid`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What became of one feedback item (the `outcome` label of `ferrite_feedback_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Joined,
    Ambiguous,
    Late,
    Unknown,
    Duplicate,
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Joined,
        Outcome::Ambiguous,
        Outcome::Late,
        Outcome::Unknown,
        Outcome::Duplicate,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Joined => "joined",
            Outcome::Ambiguous => "ambiguous",
            Outcome::Late => "late",
            Outcome::Unknown => "unknown",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid => "invalid",
        }
    }
}

struct Entry {
    at: Instant,
    /// Predicted class per row.
    classes: Box<[u32]>,
    repeated: bool,
    labelled: bool,
}

/// Recent predictions and the accuracy window.
pub struct Store {
    ttl: Duration,
    max_ids: usize,
    entries: HashMap<Box<str>, Entry>,
    /// Insertion order (an id may appear more than once: only its newest insertion time counts).
    order: VecDeque<(Instant, Box<str>)>,
    /// Correctness of the last labelled rows.
    recent: VecDeque<bool>,
    correct: usize,
    accuracy_window: usize,
}

impl Store {
    pub fn new(ttl: Duration, max_ids: usize, accuracy_window: usize) -> Store {
        Store {
            ttl,
            max_ids: max_ids.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            recent: VecDeque::new(),
            correct: 0,
            accuracy_window: accuracy_window.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a prediction (its classes per row) under `id`.
    pub fn insert(&mut self, id: &str, classes: Box<[u32]>, now: Instant) {
        self.expire(now);
        let id: Box<str> = id.into();
        let repeated = self.entries.contains_key(&id);
        self.entries.insert(
            id.clone(),
            Entry {
                at: now,
                classes,
                repeated,
                labelled: false,
            },
        );
        self.order.push_back((now, id));
        while self.entries.len() > self.max_ids {
            self.pop_oldest();
        }
        // Stale order slots (ids re-inserted later) are bounded too.
        while self.order.len() > 2 * self.max_ids {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            if self.entries.get(&id).is_some_and(|e| e.at == at) {
                self.entries.remove(&id);
            }
        }
    }

    /// Forgets ids older than `2 x ttl`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) <= 2 * self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Joins labels (class indices, one per row) with the prediction `id`.
    pub fn label(&mut self, id: &str, labels: &[u32], now: Instant) -> Outcome {
        self.expire(now);
        let Some(e) = self.entries.get_mut(id) else {
            return Outcome::Unknown;
        };
        if now.saturating_duration_since(e.at) > self.ttl {
            return Outcome::Late;
        }
        if e.labelled {
            return Outcome::Duplicate;
        }
        if labels.len() != e.classes.len() {
            return Outcome::Invalid;
        }
        e.labelled = true;
        let outcome = if e.repeated {
            Outcome::Ambiguous
        } else {
            Outcome::Joined
        };
        let hits: Vec<bool> = e.classes.iter().zip(labels).map(|(p, l)| p == l).collect();
        for ok in hits {
            self.recent.push_back(ok);
            self.correct += usize::from(ok);
            if self.recent.len() > self.accuracy_window {
                let old = self
                    .recent
                    .pop_front()
                    .expect("over the window means non-empty. This is a bug.");
                self.correct -= usize::from(old);
            }
        }
        outcome
    }

    /// Accuracy over the last labelled rows; `None` before any.
    pub fn accuracy(&self) -> Option<f64> {
        (!self.recent.is_empty()).then(|| self.correct as f64 / self.recent.len() as f64)
    }

    /// Labelled rows in the accuracy window.
    pub fn labelled_rows(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_join_and_give_exact_accuracy() {
        let t0 = Instant::now();
        let mut s = Store::new(Duration::from_secs(60), 10_000, 1000);
        for i in 0..1000u32 {
            s.insert(&format!("r{i}"), vec![i % 10].into(), t0);
        }
        let mut correct = 0;
        for i in 0..1000u32 {
            // Every third label is wrong.
            let label = if i % 3 == 0 { (i + 1) % 10 } else { i % 10 };
            correct += usize::from(i % 3 != 0);
            assert_eq!(s.label(&format!("r{i}"), &[label], t0), Outcome::Joined);
        }
        assert_eq!(s.accuracy(), Some(correct as f64 / 1000.0));
        assert_eq!(s.label("r1", &[1], t0), Outcome::Duplicate);
        assert_eq!(s.label("nope", &[1], t0), Outcome::Unknown);
    }

    #[test]
    fn late_unknown_ambiguous_and_invalid_are_told_apart() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut s = Store::new(ttl, 100, 10);
        s.insert("a", vec![1, 2].into(), t0);
        s.insert("b", vec![3].into(), t0);
        s.insert("b", vec![4].into(), t0);
        assert_eq!(s.label("a", &[1], t0), Outcome::Invalid);
        assert_eq!(s.label("b", &[4], t0), Outcome::Ambiguous);
        assert_eq!(s.accuracy(), Some(1.0));
        assert_eq!(s.label("a", &[1, 2], t0 + ttl * 3 / 2), Outcome::Late);
        assert_eq!(s.label("a", &[1, 2], t0 + ttl * 3), Outcome::Unknown);
        assert!(s.is_empty());
    }

    #[test]
    fn store_is_bounded_by_max_ids_and_accuracy_by_its_window() {
        let t0 = Instant::now();
        let mut s = Store::new(Duration::from_secs(60), 3, 2);
        for i in 0..10u32 {
            s.insert(&i.to_string(), vec![0].into(), t0);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.label("0", &[0], t0), Outcome::Unknown);
        assert_eq!(s.label("7", &[1], t0), Outcome::Joined);
        assert_eq!(s.label("8", &[0], t0), Outcome::Joined);
        assert_eq!(s.label("9", &[0], t0), Outcome::Joined);
        assert_eq!((s.accuracy(), s.labelled_rows()), (Some(1.0), 2));
    }
}
