#![no_main]
//! cargo fuzz target: `ferrite::protocol::fuzz::openai` (see src/protocol/fuzz.rs).

use ferrite_fuzz::protocol::fuzz;

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::openai(data));
