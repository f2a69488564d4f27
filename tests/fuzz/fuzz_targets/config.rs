//! cargo-fuzz target `config`: bytes into `ringmesh::fuzzing::config` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::config(data);
});
