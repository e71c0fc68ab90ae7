//! Safe rollout, the pure part: how unnamed requests are split between a model's versions
//! (`routing`: weights, sticky keys), the guard that takes a failing canary out of the split
//! (`guard`), how a shadow copy's outputs are compared with the live ones (`compare`), and the
//! rollout state a model carries (current split, shadow, history, events; `state`). No I/O, no
//! threads, no queues: the repository owns the state and the API acts on it.

pub mod compare;
pub mod guard;
pub mod routing;
pub mod state;

pub use compare::CompareKind;
pub use guard::{GuardConfig, Verdict, WindowStats};
pub use routing::{Split, BUCKETS};
pub use state::{Event, HistoryEntry, RolloutState, ShadowSpec, Source};
