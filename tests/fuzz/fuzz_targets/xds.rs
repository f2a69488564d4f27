//! cargo-fuzz target `xds`: bytes into `ringmesh::fuzzing::xds` (its doc says how they are read).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringmesh::fuzzing::xds(data);
});
