//! tuning/check.sh and tuning/apply.sh against a pod netns the test made (never the root
//! namespace): check finds differences, --dry-run changes nothing, apply makes check pass.

mod common;

use std::process::Command;

use common::*;

fn script(name: &str, args: &[&str]) -> (bool, String) {
    let path = format!("{}/tuning/{name}", env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash").arg(path).args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn netns_tuning_check_and_apply() {
    let Some(mut lab) = lab_or_skip("netns_tuning") else {
        return;
    };
    let n = lab.add_node("n").unwrap();
    let pod = lab.add_pod(n, "p", true).unwrap();
    let ns = pod.netns.as_str();
    let (ok, out) = script("check.sh", &["--netns", ns]);
    assert!(!ok && out.contains("DIFF  net.ipv4.tcp_tw_reuse"), "{out}");
    let (ok, out) = script("apply.sh", &["--dry-run", "--netns", ns]);
    assert!(
        ok && out.contains("would set  net.ipv4.tcp_tw_reuse = 1"),
        "{out}"
    );
    let (ok, _) = script("check.sh", &["--netns", ns]);
    assert!(!ok, "--dry-run changed something");
    let (ok, out) = script("apply.sh", &["--netns", ns]);
    assert!(
        ok && out.contains("set        net.ipv4.tcp_tw_reuse = 1"),
        "{out}"
    );
    let (ok, out) = script("check.sh", &["--netns", ns]);
    assert!(ok && out.contains("0 difference(s)"), "{out}");
}
