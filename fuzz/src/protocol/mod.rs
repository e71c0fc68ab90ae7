//! `src/protocol`'s decoders and the fuzz harness, at their server module paths.

#[path = "../../../src/protocol/embeddings.rs"]
pub mod embeddings;
#[path = "../../../src/protocol/error.rs"]
mod error;
#[path = "../../../src/protocol/fuzz.rs"]
pub mod fuzz;
#[path = "../../../src/protocol/json.rs"]
pub mod json;
#[path = "../../../src/protocol/kserve_v1.rs"]
pub mod kserve_v1;
#[path = "../../../src/protocol/kserve_v2.rs"]
pub mod kserve_v2;
#[path = "../../../src/protocol/openai.rs"]
pub mod openai;
#[path = "../../../src/protocol/tei.rs"]
pub mod tei;

pub use error::ProtocolError;
