#![no_main]

use libfuzzer_sys::fuzz_target;
use vmvault_repo::format::fuzzing;

#[global_allocator]
static ALLOC: fuzzing::CountingAlloc = fuzzing::CountingAlloc;

fuzz_target!(|data: &[u8]| fuzzing::image(data, vmvault_ingest::guest::fuzz_fs::disk));
