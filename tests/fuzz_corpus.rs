//! The fuzz targets' committed inputs on the stable toolchain: every seed in
//! `tests/fuzz/corpus/<target>/` and every crash input kept in
//! `tests/fuzz/regressions/<target>/` goes through the same entry point as the cargo-fuzz
//! target (`ringmesh::fuzzing`), so a fixed crash stays fixed without nightly.
//!
//! `RINGMESH_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` rewrites the generated seeds
//! (`fuzzing::seeds()`) into the corpus directories.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ringmesh::fuzzing::{self, TARGETS, Target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The files of `<kind>/<target>/`, by target (directories that do not exist: none).
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else {
        return out;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if f.path().is_file() {
                out.push((name.clone(), f.path()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn committed_inputs_replay_without_a_panic() {
    let mut bad = Vec::new();
    let mut corpus = Vec::new();
    for kind in ["corpus", "regressions"] {
        for (name, path) in inputs(kind) {
            let Some(f) = target(&name) else {
                bad.push(format!("{}: no fuzz target {name:?}", path.display()));
                continue;
            };
            let data = std::fs::read(&path).unwrap();
            if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
                bad.push(format!("{}: panicked (message above)", path.display()));
            }
            if kind == "corpus" {
                corpus.push(name);
            }
        }
    }
    for (name, _) in TARGETS {
        if !corpus.iter().any(|n| n == name) {
            bad.push(format!(
                "target {name} has no corpus in tests/fuzz/corpus/{name}/"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn generated_seeds_are_accepted_and_committed() {
    let write = std::env::var_os("RINGMESH_FUZZ_WRITE_SEEDS").is_some();
    let mut bad = Vec::new();
    let seeds = fuzzing::seeds();
    for (name, _) in TARGETS {
        if !seeds.iter().any(|s| s.target == name) {
            bad.push(format!("target {name} has no generated seed"));
        }
    }
    for s in seeds {
        let f = target(s.target).expect("seeds name known targets");
        let accepted = f(&s.bytes);
        if accepted == 0 {
            bad.push(format!("seed {}/{} is not accepted", s.target, s.name));
        }
        let path = fuzz_dir()
            .join("corpus")
            .join(s.target)
            .join(format!("seed-{}", s.name));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &s.bytes).unwrap();
        } else if std::fs::read(&path).ok().as_ref() != Some(&s.bytes) {
            bad.push(format!(
                "{} is missing or stale: RINGMESH_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus",
                path.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Each target's cargo-fuzz file calls the entry point of its name.
#[test]
fn every_target_has_its_fuzz_target_file() {
    let mut bad = Vec::new();
    for (name, _) in TARGETS {
        let p = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if !text.contains(&format!("ringmesh::fuzzing::{name}(")) {
            bad.push(format!(
                "{} does not call ringmesh::fuzzing::{name}",
                p.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
