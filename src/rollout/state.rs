//! A model's rollout state: the split unnamed requests follow, the shadow copy, where the split
//! came from, a short history of changes (for `rollback`) and the guard's events. Plain data,
//! serialisable (the server persists it under `--state-dir`); every change is one method that
//! records who made it and when.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::routing::Split;

/// History entries and events kept per model.
pub const HISTORY_CAP: usize = 32;

/// Mirror `percent` of a model's routed requests to `version` (never answered to the client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    #[serde(with = "version_str")]
    pub version: u64,
    pub percent: f64,
}

/// Versions are strings on the wire (KServe) and in config keys; numbers inside.
mod version_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            N(u64),
        }
        match V::deserialize(d)? {
            V::N(n) => Ok(n),
            V::S(s) => s
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("'{s}' is not a version number"))),
        }
    }
}

/// Where the current split came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// No `[routing]`: the newest version that passed its gate takes everything.
    Default,
    /// The model's `config.toml` (shared by every replica that reads the same file).
    Config,
    /// A live change through the admin API, on this replica only.
    Live { principal: String },
    /// The guard took a canary out, on this replica only.
    AutoRollback { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_unix: u64,
    pub principal: String,
    pub action: String,
    pub before: Split,
    pub before_shadow: Option<ShadowSpec>,
    pub after: Split,
}

/// An automatic rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_unix: u64,
    pub version: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub split: Split,
    pub shadow: Option<ShadowSpec>,
    pub source: Source,
    pub history: VecDeque<HistoryEntry>,
    pub events: VecDeque<Event>,
    /// Hash of the config's `[routing]` this state started from: a config whose routing changed
    /// since replaces a persisted live state.
    pub config_hash: u64,
}

impl RolloutState {
    pub fn from_config(split: Split, shadow: Option<ShadowSpec>, config_hash: u64) -> Self {
        let source = if split.is_empty() && shadow.is_none() {
            Source::Default
        } else {
            Source::Config
        };
        RolloutState {
            split,
            shadow,
            source,
            history: VecDeque::new(),
            events: VecDeque::new(),
            config_hash,
        }
    }

    /// A change by `principal` (`action`: "routing", "promote", ...), kept in the history.
    pub fn change(
        &mut self,
        split: Split,
        shadow: Option<ShadowSpec>,
        principal: &str,
        action: &str,
        now: u64,
    ) {
        push_capped(
            &mut self.history,
            HistoryEntry {
                at_unix: now,
                principal: principal.into(),
                action: action.into(),
                before: std::mem::replace(&mut self.split, split.clone()),
                before_shadow: std::mem::replace(&mut self.shadow, shadow),
                after: split,
            },
        );
        self.source = Source::Live {
            principal: principal.into(),
        };
    }

    /// Back to the split (and shadow) before the last change; `Err` when there is none.
    pub fn rollback(&mut self, principal: &str, now: u64) -> Result<(), String> {
        let last = self
            .history
            .pop_back()
            .ok_or_else(|| "no earlier routing to roll back to".to_string())?;
        let _ = now;
        self.split = last.before;
        self.shadow = last.before_shadow;
        self.source = Source::Live {
            principal: principal.into(),
        };
        Ok(())
    }

    /// The guard's action: `version`'s weight goes to 0 (recorded in the history, so a manual
    /// rollback can restore it) and the event is kept.
    pub fn take_out(&mut self, version: u64, reason: &str, now: u64) {
        let mut split = self.split.clone();
        split.weights.insert(version, 0);
        let shadow = self.shadow.clone();
        self.change(split, shadow, "guard", "auto-rollback", now);
        self.source = Source::AutoRollback {
            reason: format!("version {version}: {reason}"),
        };
        push_capped(
            &mut self.events,
            Event {
                at_unix: now,
                version,
                reason: reason.into(),
            },
        );
    }

    /// Drops versions that are no longer loaded from the split and the shadow.
    pub fn retain_loaded(&mut self, loaded: &[u64]) {
        self.split.weights.retain(|v, _| loaded.contains(v));
        if self
            .shadow
            .as_ref()
            .is_some_and(|s| !loaded.contains(&s.version))
        {
            self.shadow = None;
        }
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == HISTORY_CAP {
        q.pop_front();
    }
    q.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_then_rollback_restores_split_and_shadow() {
        let mut s = RolloutState::from_config(Split::only(1), None, 0);
        let canary = Split {
            weights: [(1, 90), (2, 10)].into_iter().collect(),
        };
        let shadow = Some(ShadowSpec {
            version: 2,
            percent: 20.0,
        });
        s.change(canary.clone(), shadow.clone(), "alice", "routing", 10);
        assert_eq!((s.split.clone(), s.shadow.clone()), (canary, shadow));
        s.change(Split::only(2), None, "alice", "promote", 11);
        s.rollback("bob", 12).unwrap();
        assert_eq!(s.split.weights.get(&2), Some(&10));
        s.rollback("bob", 13).unwrap();
        assert_eq!(s.split, Split::only(1));
        assert!(s.shadow.is_none());
        assert!(s.rollback("bob", 14).is_err());
    }

    #[test]
    fn take_out_zeroes_the_canary_and_records_the_event() {
        let mut s = RolloutState::from_config(
            Split {
                weights: [(1, 50), (2, 50)].into_iter().collect(),
            },
            None,
            0,
        );
        s.take_out(2, "error rate 30%", 5);
        assert_eq!(s.split.pick(9_999), Some(1));
        assert_eq!(s.events.len(), 1);
        assert!(matches!(s.source, Source::AutoRollback { .. }));
        s.rollback("ops", 6).unwrap();
        assert_eq!(s.split.weights.get(&2), Some(&50));
    }

    #[test]
    fn history_is_capped() {
        let mut s = RolloutState::from_config(Split::only(1), None, 0);
        for i in 0..100 {
            s.change(Split::only(i % 3 + 1), None, "p", "routing", i);
        }
        assert_eq!(s.history.len(), HISTORY_CAP);
    }
}
