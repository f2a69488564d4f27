//! cargo-fuzz target `zds`: bytes into `ringmesh::fuzzing::zds` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::zds(data);
});
