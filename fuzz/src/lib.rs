//! The request-body decoders under fuzzing, compiled from the server's own files: `protocol`'s
//! decoders and harness (`src/protocol/fuzz.rs`, shared with `tests/fuzz_corpus.rs`), the tensor
//! data types (`src/tensor/data.rs`, with `packed.rs` beside it) and input validation (`src/spec/tensor_spec.rs`), each at the
//! module path the server has them at. Nothing here but the module tree: if a decoder starts to use
//! more of the server, this crate stops building (the protocol layer is meant to stay a leaf).
#![allow(dead_code)]

#[path = "../../src/tensor/data.rs"]
pub mod tensor;

#[path = "../../src/spec/tensor_spec.rs"]
pub mod spec;

pub mod protocol;
