#![no_main]
//! cargo fuzz target: `ferrite::protocol::fuzz::kserve_v2_binary` (see src/protocol/fuzz.rs).

use ferrite_fuzz::protocol::fuzz;

#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::kserve_v2_binary(data));
