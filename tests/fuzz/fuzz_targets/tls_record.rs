//! cargo-fuzz target `tls_record`: bytes into `ringmesh::fuzzing::tls_record` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::tls_record(data);
});
