//! `ringmesh bench --quick` as CI runs it: raw, the two relays and ringmesh side by side,
//! the JSON has the issue's shape and sane values, and a contender that does not proxy is
//! reported INVALID, never as fast. Root.

mod common;

use std::process::Command;

use common::*;

#[test]
fn netns_bench_quick_json_and_invalid_contender() {
    let Some(_) = lab_or_skip("netns_bench_quick") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = dir.path().join("out");
    // A node proxy that is ready and carries traffic, but not over HBONE: ringmesh with every
    // workload turned into plain TCP (passthrough out, plaintext in).
    let bin = env!("CARGO_BIN_EXE_ringmesh");
    let plain = format!(
        r#"plain=sh -c 'sed "s/protocol: HBONE/protocol: TCP/" "$CONFIG" > "$CONFIG.$NODE.tcp" && exec {bin} node --config "$CONFIG.$NODE.tcp" --zds-socket "$ZDS_SOCKET" --ca-cert "$CA_CERT" --ca-key "$CA_KEY"'"#
    );
    let o = Command::new(bin)
        .args([
            "bench",
            "--quick",
            "--rounds",
            "1",
            "--relay",
            "--peer",
            "idle=sleep 600",
            "--peer",
            &plain,
            "--json",
        ])
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let c = &v["contenders"];
    for name in ["raw", "relay", "relay-tls", "ringmesh"] {
        assert_eq!(c[name]["valid"], true, "{name}: {v}");
        for k in [
            "bulk_1_gbps",
            "bulk_8_gbps",
            "rr_p50_us",
            "rr_p99_us",
            "conn_per_s",
        ] {
            let x = c[name][k].as_f64().unwrap_or(-1.0);
            assert!(x > 0.0, "{name}.{k} = {x}");
        }
        assert!(c[name]["rr_p99_us"].as_f64() >= c[name]["rr_p50_us"].as_f64());
    }
    for k in ["bytes_per_tunnel", "cpu_s_per_gb"] {
        assert!(
            c["ringmesh"][k].as_f64().unwrap_or(-1.0) >= 0.0,
            "ringmesh.{k}"
        );
        assert!(c["raw"][k].is_null(), "raw has no proxy: {k} must be null");
    }
    // The relays carried the bytes through their two hops (the bench checks server-b's
    // port 15006 or 15008 counter, else they would be INVALID), so they have CPU figures but,
    // not being node proxies, no idle-tunnel memory.
    for name in ["relay", "relay-tls"] {
        assert!(
            c[name]["cpu_s_per_gb"].as_f64().unwrap_or(-1.0) > 0.0,
            "{v}"
        );
        assert!(c[name]["bytes_per_tunnel"].is_null(), "{v}");
        assert!(stdout.contains(&format!("ringmesh / {name} ")), "{stdout}");
    }
    // The contender that never proxies is INVALID, with the reason, and has no figures.
    assert_eq!(c["idle"]["valid"], false, "{v}");
    assert!(
        c["idle"]["invalid_reason"]
            .as_str()
            .unwrap()
            .contains("never became ready")
    );
    assert!(c["idle"]["bulk_1_gbps"].is_null());
    assert!(stdout.contains("idle (INVALID)"), "{stdout}");
    // The one that proxies without HBONE is caught by the port-15008 counter.
    assert_eq!(c["plain"]["valid"], false, "{v}");
    let why = c["plain"]["invalid_reason"].as_str().unwrap();
    assert!(why.contains("did not go through HBONE"), "{why}");
    assert!(c["plain"]["bulk_1_gbps"].is_null());
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(v["command"].as_str().unwrap().contains("bench --quick"));
    for f in ["results.md", "latency.svg", "throughput.svg"] {
        let body = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(body.contains("ringmesh"), "{f}");
    }
    assert!(
        !ringmesh::lab::list_netns()
            .iter()
            .any(|n| n.starts_with("rmbench-")),
        "the bench left namespaces behind"
    );
}
