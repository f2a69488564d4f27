//! cargo-fuzz target `policy`: bytes into `ringmesh::fuzzing::policy` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::policy(data);
});
