//! cargo-fuzz target `h2`: bytes into `ringmesh::fuzzing::h2` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::h2(data);
});
