//! The architecture's layering as a test: pure cores do not reach up into I/O, flows or
//! wiring; no two modules use each other (no import cycle between the top-level modules, nor
//! between the files of one module, outside the few flows listed); `unsafe` appears only in
//! `runtime/` and `inpod/`; every module opens with `//!`.

use std::collections::{BTreeMap, BTreeSet};
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
        ("tls", pure(&["crate::state", "crate::certs"])),
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
        // The SPIFFE id, the built-in CA and the SVID reader: the layer under `tls` and
        // `certs`, so it uses neither (that was the `identity` <-> `tls` cycle).
        (
            "identity",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::lab",
                "crate::inpod",
                "crate::runtime",
                "crate::tls",
                "crate::certs",
                "crate::xds",
            ],
        ),
        // The certificate lifecycle, on the control thread: may use identity and tls.
        (
            "certs",
            vec![
                "crate::proxy",
                "crate::app",
                "crate::lab",
                "crate::inpod",
                "crate::runtime",
            ],
        ),
        // The ring's sockets sit under the engine seam (`runtime::net` wraps them), never
        // on it (that was the `runtime/net` <-> `runtime/uring/net` cycle).
        (
            "runtime/uring",
            vec!["crate::runtime::net", "super::super::net"],
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

/// `text` with every `#[cfg(test)]` item blanked (a `mod tests;`, a `mod tests { … }`, a
/// test-only `fn` or `use`): newlines kept, so line numbers still match the file. Code after
/// a test item is kept (a `#[cfg(test)] mod tests;` may open a file).
fn without_tests(text: &str) -> String {
    // Only an attribute that opens its line (not one a comment or a string mentions).
    let item_at = |s: &str| {
        s.match_indices("#[cfg(test)]")
            .map(|(at, _)| at)
            .find(|&at| {
                s[..at]
                    .rsplit('\n')
                    .next()
                    .is_some_and(|l| l.trim().is_empty())
            })
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = item_at(rest) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let b = item.as_bytes();
        let (mut depth, mut i, mut end) = (0usize, 0, item.len());
        while i < b.len() {
            match b[i] {
                // Strings, char literals and comments may hold braces.
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = end.min(item.len());
        out.extend(item[..end].chars().filter(|c| *c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// The lines of `module` (a directory or file under `src/`) that use one of `forbidden`;
/// test code (`*tests.rs`, `#[cfg(test)]` items) only when `with_tests`.
fn uses_of(src: &Path, module: &str, forbidden: &[&str], with_tests: bool) -> Vec<String> {
    let mut files = Vec::new();
    let dir = src.join(module);
    if dir.is_dir() {
        rs_files(&dir, &mut files);
    } else if dir.is_file() {
        files.push(dir);
    }
    let mut bad = Vec::new();
    for f in files {
        if !with_tests && f.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = if with_tests {
            text
        } else {
            without_tests(&text)
        };
        for (n, line) in code_lines(&text) {
            for fb in forbidden {
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
    bad
}

#[test]
fn layering_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (module, forbidden) in rules() {
        bad.extend(uses_of(&src, module, &forbidden, false));
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

/// The two cycles the tree had stay broken in test code too: a test of `identity` that
/// needs TLS configs or the CA client belongs in `tls` or `certs`.
#[test]
fn the_old_cycles_stay_broken_even_in_tests() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = uses_of(&src, "identity", &["crate::tls", "crate::certs"], true);
    bad.extend(uses_of(
        &src,
        "runtime/uring",
        &["crate::runtime::net", "super::super::net"],
        true,
    ));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
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

/// Modules whose files still use each other in a loop (the h2 codec's `frame` and `state`;
/// the lab; the proxy and waypoint flows, whose files call back and forth). Every other
/// module, and the crate's top level, must have none; a module listed here that no longer
/// has one fails `cycle_exceptions_are_current`, so the list only shrinks.
const FILES_MAY_LOOP: &[&str] = &["hbone/h2", "lab", "proxy", "waypoint"];

/// No import cycle between sibling modules: not between the crate's top-level modules
/// (`identity` -> `tls` -> `identity` was one), nor between the files of one module
/// (`runtime/net` -> `runtime/uring` -> `runtime/net` was one), outside `FILES_MAY_LOOP`.
/// Non-test code only, as `layering_holds`.
#[test]
fn no_import_cycles() {
    let mut bad = Vec::new();
    for (scope, cycles) in sibling_cycles() {
        if FILES_MAY_LOOP.contains(&scope.as_str()) {
            continue;
        }
        let scope = if scope.is_empty() {
            "src/ (top level)".to_string()
        } else {
            format!("src/{scope}/")
        };
        bad.extend(cycles.into_iter().map(|c| format!("{scope}: {c}")));
    }
    assert!(bad.is_empty(), "import cycles:\n{}", bad.join("\n"));
}

#[test]
fn cycle_exceptions_are_current() {
    let found = sibling_cycles();
    for scope in FILES_MAY_LOOP {
        assert!(
            found.contains_key(*scope),
            "{scope} has no import cycle any more: take it off FILES_MAY_LOOP"
        );
    }
}

/// The finder finds the loops it is meant to (paths through `crate::`, `super::`, `self::`
/// and nested `{…}` groups) and nothing else.
#[test]
fn cycle_finder_reads_use_trees() {
    let me = |s: &str| -> Vec<String> { s.split('/').map(String::from).collect() };
    let named = paths_named(
        "use super::{driver, rxbuf::{self, fresh_buf as fb}};\n\
         // crate::commented::out\n\
         let x = crate::runtime::net::Stream::Epoll(s);\n\
         use super::super::net;\n\
         use self::inner::*;\n\
         use crate::io::{\n    Counters,\n    tls::{self, TlsStream},\n};",
        &me("runtime/uring/net"),
    );
    let want: Vec<Vec<String>> = [
        "runtime/uring/driver",
        "runtime/uring/rxbuf",
        "runtime/uring/rxbuf/fresh_buf",
        "runtime/net/Stream/Epoll",
        "runtime/net",
        "runtime/uring/net/inner",
        "io/Counters",
        "io/tls",
        "io/tls/TlsStream",
    ]
    .iter()
    .map(|s| me(s))
    .collect();
    assert_eq!(named, want);
    let mut g = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")] {
        g.entry(a.to_string())
            .or_insert_with(BTreeMap::new)
            .insert(b.to_string(), format!("{a}.rs:1"));
    }
    let cycles = cycles_in(&g);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].starts_with("a -> b -> c -> a"), "{cycles:?}");
}

/// A test item is left out wherever it sits, and the code after it is still read (a file
/// may open with `#[cfg(test)] mod tests;`).
#[test]
fn test_items_are_blanked_and_what_follows_is_kept() {
    let text = "//! doc: #[cfg(test)] in a comment\n\
                #[cfg(test)]\n\
                mod tests;\n\
                use crate::kept;\n\
                #[cfg(test)]\n\
                mod t {\n    fn f() { let s = \"}\"; let c = '{'; } // }\n    use crate::gone;\n}\n\
                use crate::also_kept;";
    let out = without_tests(text);
    assert_eq!(out.lines().count(), text.lines().count());
    assert!(out.contains("use crate::kept;"), "{out}");
    assert!(out.contains("use crate::also_kept;"), "{out}");
    assert!(out.contains("//! doc: #[cfg(test)]"), "{out}");
    assert!(!out.contains("mod tests") && !out.contains("gone"), "{out}");
    assert_eq!(
        out.lines().position(|l| l.contains("also_kept")),
        text.lines().position(|l| l.contains("also_kept"))
    );
}

/// Every scope (`""` for the crate's top level, else a module's path) whose child modules
/// use each other in a loop, with one description per loop.
fn sibling_cycles() -> BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    // scope -> from -> to -> where (the first line that makes the edge).
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        if rel.ends_with("tests.rs") || rel == "main.rs" || rel == "build.rs" {
            continue;
        }
        let me = module_of(&rel);
        let text = std::fs::read_to_string(&f).unwrap();
        let code = without_tests(&text);
        for (target, line) in paths_named_at(&code, &me) {
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == me.len() || common == target.len() {
                continue; // itself, a child of it or an ancestor
            }
            let scope = me[..common].to_vec();
            let (from, to) = (&me[common], &target[common]);
            let mut dir = src.clone();
            dir.extend(&scope);
            if !dir.join(to).is_dir() && !dir.join(format!("{to}.rs")).is_file() {
                continue; // an item of the common parent, not a sibling module
            }
            graphs
                .entry(scope)
                .or_default()
                .entry(from.clone())
                .or_default()
                .entry(to.clone())
                .or_insert_with(|| format!("{rel}:{line}"));
        }
    }
    let mut out = BTreeMap::new();
    for (scope, g) in graphs {
        let cycles = cycles_in(&g);
        if !cycles.is_empty() {
            out.insert(scope.join("/"), cycles);
        }
    }
    out
}

/// A file's module path: `runtime/uring/net.rs` is `runtime::uring::net`; `mod.rs` and
/// `lib.rs` are their directory's module.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The module paths `code` (of the module at `me`) names through `crate::`, `super::` and
/// `self::`, absolute, `{…}` groups expanded. Comment lines are skipped. Limits: a `super::`
/// inside an inline `mod` resolves as if at the file's level, and a re-export hides the
/// module it comes from.
fn paths_named(code: &str, me: &[String]) -> Vec<Vec<String>> {
    paths_named_at(code, me)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`paths_named`], each with its line number (1-based).
fn paths_named_at(code: &str, me: &[String]) -> Vec<(Vec<String>, usize)> {
    // Comment lines blanked, so that offsets still map to lines.
    let text: String = code
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !ident(b[i]) || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let word = read_ident(b, &mut i);
        let base: Option<Vec<String>> = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(me.to_vec()),
            "super" => me.len().checked_sub(1).map(|n| me[..n].to_vec()),
            _ => None,
        };
        let Some(mut base) = base else {
            continue;
        };
        if !eat(b, &mut i, "::") {
            continue;
        }
        // More `super::` walk further up.
        loop {
            let save = i;
            skip_ws(b, &mut i);
            if read_ident(b, &mut i) == "super" && eat(b, &mut i, "::") {
                if base.pop().is_none() {
                    break;
                }
            } else {
                i = save;
                break;
            }
        }
        let line = text[..start].matches('\n').count() + 1;
        let mut paths = Vec::new();
        use_tree(b, &mut i, base, &mut paths);
        out.extend(paths.into_iter().map(|p| (p, line)));
    }
    out
}

/// Reads one use tree at `i` below `prefix` (`a::b`, `a::{b, c::{self, d}}`, `a as b`,
/// `*`) and pushes every path it names.
fn use_tree(b: &[u8], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        skip_ws(b, i);
        if eat(b, i, "{") {
            loop {
                skip_ws(b, i);
                if *i >= b.len() || eat(b, i, "}") {
                    return;
                }
                use_tree(b, i, prefix.clone(), out);
                // Past an `as name` to the next `,` or the group's end.
                while *i < b.len() && b[*i] != b',' && b[*i] != b'}' {
                    *i += 1;
                }
                eat(b, i, ",");
            }
        }
        let word = read_ident(b, i);
        if word.is_empty() {
            if !prefix.is_empty() {
                out.push(prefix); // `*`, or a path ended by punctuation
            }
            return;
        }
        if word != "self" {
            prefix.push(word);
        }
        let save = *i;
        skip_ws(b, i);
        if !eat(b, i, "::") {
            *i = save;
            out.push(prefix);
            return;
        }
    }
}

fn read_ident(b: &[u8], i: &mut usize) -> String {
    let start = *i;
    while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_') {
        *i += 1;
    }
    String::from_utf8_lossy(&b[start..*i]).into_owned()
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn eat(b: &[u8], i: &mut usize, s: &str) -> bool {
    if b[*i..].starts_with(s.as_bytes()) {
        *i += s.len();
        true
    } else {
        false
    }
}

/// One description per strongly connected group of `g` (module -> used module -> where):
/// a loop through it, each step with the line that makes it.
fn cycles_in(g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for m in g.get(&n).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in g.keys() {
        if done.contains(a) || !reach(a).contains(a) {
            continue;
        }
        // The shortest loop from `a` back to `a` (breadth first).
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([a.clone()]);
        'search: while let Some(n) = queue.pop_front() {
            for m in g.get(&n).into_iter().flat_map(|e| e.keys()) {
                if m == a {
                    prev.insert(a.clone(), n.clone());
                    break 'search;
                }
                if !prev.contains_key(m) {
                    prev.insert(m.clone(), n.clone());
                    queue.push_back(m.clone());
                }
            }
        }
        let mut path = vec![a.clone()];
        let mut at = prev[a].clone();
        while at != *a {
            path.push(at.clone());
            at = prev[&at].clone();
        }
        path.push(a.clone());
        path.reverse();
        let steps: Vec<String> = path
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        out.push(format!("{} [{}]", path.join(" -> "), steps.join("; ")));
        let group: BTreeSet<String> = reach(a)
            .into_iter()
            .filter(|n| reach(n).contains(a))
            .collect();
        done.extend(group);
    }
    out
}
