//! cargo-fuzz target `connect`: bytes into `ringmesh::fuzzing::connect` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::connect(data);
});
