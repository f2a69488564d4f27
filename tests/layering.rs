//! The architecture's layering as a test: pure cores do not reach up into I/O, flows or
//! wiring; `unsafe` appears only in `runtime/` and `inpod/`; every module opens with `//!`.

use std::path::{Path, PathBuf};

const FLOWS_AND_UP: &[&str] = &["crate::proxy", "crate::app", "crate::lab", "crate::inpod"];

fn rules() -> Vec<(&'static str, Vec<&'static str>)> {
    let pure = |extra: &[&'static str]| {
        let mut v = vec!["tokio::", "crate::runtime", "crate::io::"];
        v.extend_from_slice(FLOWS_AND_UP);
        v.extend_from_slice(extra);
        v
    };
    vec![
        ("state", pure(&[])),
        ("policy", pure(&["crate::state"])),
        ("tls", pure(&["crate::state"])),
        ("hbone", pure(&[])),
        ("config", pure(&[])),
        (
            "runtime",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::config",
                "crate::state",
                "crate::policy",
                "crate::lab",
                "crate::inpod",
            ],
        ),
        (
            "io",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::state",
                "crate::policy",
                "crate::config",
            ],
        ),
        (
            "proxy",
            vec!["crate::app", "crate::lab", "crate::xds", "crate::waypoint"],
        ),
        // The waypoint is a flow like the node's (it builds on proxy's pool and h2conn);
        // its routing, balancing and resource loading are pure cores.
        ("waypoint", vec!["crate::app", "crate::lab", "crate::xds"]),
        ("waypoint/routes", pure(&["crate::waypoint::http"])),
        ("waypoint/lb.rs", pure(&["crate::state"])),
        ("waypoint/resources", pure(&[])),
        ("inpod", vec!["crate::proxy", "crate::app", "crate::lab"]),
        ("proto", pure(&["crate::"])),
        // The control thread's modules never touch the data plane.
        (
            "xds",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::lab",
                "crate::inpod",
                "crate::runtime",
                "crate::io::",
            ],
        ),
        (
            "identity",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::lab",
                "crate::inpod",
                "crate::runtime",
            ],
        ),
        (
            "admin",
            vec![
                "crate::proxy",
                "crate::lab",
                "crate::inpod",
                "crate::xds::client::spawn",
            ],
        ),
        // What a cluster runs is built without the lab (feature `lab`).
        (
            "telemetry",
            vec!["crate::lab", "crate::demo", "crate::benchmark"],
        ),
    ]
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

#[test]
fn layering_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (module, forbidden) in rules() {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rs_files(&dir, &mut files);
        } else if dir.is_file() {
            files.push(dir);
        }
        for f in files {
            if f.to_string_lossy().ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code_lines(text) {
                for fb in &forbidden {
                    if line.contains(fb) {
                        bad.push(format!(
                            "{}:{}: {module} must not use {fb}",
                            f.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

/// Only the lab, the demo and the bench (and the wiring that starts them) may use them: the
/// cluster build leaves them out.
#[test]
fn only_lab_code_uses_the_lab() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        if ["lab/", "demo.rs", "benchmark/", "main.rs"]
            .iter()
            .any(|p| rel.starts_with(p))
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in code_lines(&text) {
            for m in ["crate::lab", "crate::demo", "crate::benchmark"] {
                if line.contains(m) {
                    bad.push(format!("{rel}:{}: uses {m}", n + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn unsafe_only_in_runtime_and_inpod_and_every_module_documented() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let allowed = rel.starts_with("runtime/") || rel.starts_with("inpod/");
        for (n, line) in code_lines(&text) {
            if !allowed && line.contains("unsafe ") && !line.contains("unsafe_code") {
                bad.push(format!(
                    "{rel}:{}: unsafe outside runtime/ and inpod/",
                    n + 1
                ));
            }
        }
        if !text.trim_start().starts_with("//!") {
            bad.push(format!("{rel}: no //! module doc"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
