//! istio-cni's in-pod capture rules, as nftables (the logic of istio's `AppendInpodRules`
//! and its nftables golden file):
//! - outbound TCP not marked 0x539 → REDIRECT to 15001 (loopback and `lo` traffic excepted);
//! - inbound TCP except to 15008, not marked 0x539 → REDIRECT to 15006;
//! - packets marked 0x539 set connmark 0x111; replies with connmark 0x111 get mark 0x111 and
//!   are routed locally by `ip rule fwmark 0x111/0xfff lookup 100` (table 100: `local
//!   0.0.0.0/0 dev lo`), so the proxy's spoofed-source connections to the app get their
//!   replies back.

use super::{LabError, run, run_input};

/// The nftables ruleset a captured pod gets.
pub const RULES: &str = r#"
table inet ringmesh-nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp ip saddr 169.254.7.127 accept
    meta l4proto tcp meta mark & 0xfff == 0x539 accept
    meta l4proto tcp tcp dport 15008 accept
    meta l4proto tcp ip daddr 127.0.0.1 accept
    meta l4proto tcp ip6 daddr ::1 accept
    meta l4proto tcp redirect to :15006
  }
  chain output {
    type nat hook output priority -100; policy accept;
    meta l4proto tcp ip daddr 169.254.7.127 accept
    meta l4proto tcp meta mark & 0xfff == 0x111 accept
    oifname "lo" ip daddr != 127.0.0.1 accept
    oifname "lo" ip6 daddr != ::1 accept
    meta l4proto tcp meta mark & 0xfff == 0x539 accept
    meta l4proto tcp ip daddr 127.0.0.1 accept
    meta l4proto tcp ip6 daddr ::1 accept
    meta l4proto tcp redirect to :15001
  }
}
table inet ringmesh-mangle {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111
  }
  chain output {
    type route hook output priority mangle; policy accept;
    ct mark & 0xfff == 0x111 meta mark set ct mark
  }
}
"#;

/// Installs the capture rules and policy routing in a pod netns.
pub fn install(netns: &str) -> Result<(), LabError> {
    run_input(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(RULES),
    )?;
    for (family, all) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let rule = [
            "rule",
            "add",
            "fwmark",
            "0x111/0xfff",
            "pref",
            "32764",
            "lookup",
            "100",
        ];
        let route = ["route", "add", "local", all, "dev", "lo", "table", "100"];
        for args in [&rule[..], &route[..]] {
            let mut v = vec!["-n", netns, family];
            v.extend_from_slice(args);
            run("ip", &v)?;
        }
    }
    Ok(())
}

/// Removes the capture rules from a pod netns (the pod leaves the mesh).
pub fn remove(netns: &str) -> Result<(), LabError> {
    for table in ["ringmesh-nat", "ringmesh-mangle"] {
        let _ = run(
            "ip",
            &[
                "netns", "exec", netns, "nft", "delete", "table", "inet", table,
            ],
        );
    }
    for (family, all) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let _ = run(
            "ip",
            &[
                "-n",
                netns,
                family,
                "rule",
                "del",
                "fwmark",
                "0x111/0xfff",
                "lookup",
                "100",
            ],
        );
        let _ = run(
            "ip",
            &[
                "-n", netns, family, "route", "del", "local", all, "dev", "lo", "table", "100",
            ],
        );
    }
    Ok(())
}
