//! The built-in CA: issuing leaves, and saving/loading the root key file safely (atomic
//! replace with mode 0600, no symlinks followed out of its directory, group/other access
//! refused on load).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;

use super::*;

#[test]
fn issues_leaf_with_spiffe_san_and_half_life() {
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let id = Identity::new("cluster.local", "ns1", "sa1");
    let cert = ca.issue(&id, now, Duration::from_secs(24 * 3600)).unwrap();
    assert_eq!(cert.chain.len(), 1);
    assert_eq!(cert.roots, vec![ca.root().clone()]);
    assert_eq!(
        crate::identity::svid::identity_of(&cert.chain[0]).unwrap(),
        id
    );
    let half = cert.refresh_at().duration_since(now).unwrap();
    assert!(half > Duration::from_secs(11 * 3600) && half < Duration::from_secs(13 * 3600));
    // A short lifetime with a back-dated notBefore still refreshes half-way from issue
    // (not at once, which would rotate without end).
    let short = ca.issue(&id, now, Duration::from_secs(8)).unwrap();
    assert!(short.not_before < now);
    assert_eq!(
        short.refresh_at().duration_since(now).unwrap(),
        Duration::from_secs(4)
    );
}

#[test]
fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    ca.save(&c, &k).unwrap();
    let loaded = Ca::load(&c, &k).unwrap();
    assert_eq!(loaded.root(), ca.root());
    let id = Identity::new("td", "a", "b");
    loaded.issue(&id, now, Duration::from_secs(60)).unwrap();
}

#[test]
fn load_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("ca.pem");
    std::fs::write(&c, "not pem").unwrap();
    let err = Ca::load(&c, &c).unwrap_err().to_string();
    assert!(err.contains("ca.pem"), "{err}");
    let err = Ca::load(&dir.path().join("missing"), &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read CA file"), "{err}");
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A saved root in `dir`: (cert path, key path).
fn saved(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
    Ca::generate(SystemTime::now())
        .unwrap()
        .save(&c, &k)
        .unwrap();
    (c, k)
}

#[test]
fn save_replaces_an_existing_key_file_atomically_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&k, "old key").unwrap();
    chmod(&k, 0o644);
    // A second name for the old file: a rewrite in place would change what it shows.
    let old = dir.path().join("old.key");
    std::fs::hard_link(&k, &old).unwrap();
    let ca = Ca::generate(SystemTime::now()).unwrap();
    ca.save(&c, &k).unwrap();
    assert_eq!(mode(&k), 0o600, "the key file keeps no old mode");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "old key");
    assert!(std::fs::read_to_string(&k).unwrap().contains("PRIVATE KEY"));
    // No temporary file left behind.
    assert_eq!(names(dir.path()), ["ca.key", "ca.pem", "old.key"]);
    Ca::load(&c, &k).unwrap();
}

#[test]
fn save_refuses_to_write_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let c = dir.path().join("ca.pem");
    // To an existing file: it is left alone.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    let k = dir.path().join("ca.key");
    symlink(&victim, &k).unwrap();
    let e = ca.save(&c, &k).unwrap_err().to_string();
    assert!(e.contains("ca.key") && e.contains("symlink"), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    // Dangling: nothing is created where it points.
    let k2 = dir.path().join("ca2.key");
    let target = dir.path().join("created-through-link");
    symlink(&target, &k2).unwrap();
    let e = ca.save(&c, &k2).unwrap_err().to_string();
    assert!(e.contains("symlink"), "{e}");
    assert!(!target.exists());
}

#[test]
fn load_refuses_a_key_file_group_or_others_can_access() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = saved(dir.path());
    for m in [0o644, 0o640, 0o604, 0o620, 0o602] {
        chmod(&k, m);
        let e = Ca::load(&c, &k).unwrap_err().to_string();
        let shown = format!("{m:04o}");
        assert!(
            e.contains(&k.display().to_string()) && e.contains(&shown) && e.contains("chmod 600"),
            "{e}"
        );
    }
    for m in [0o600, 0o400] {
        chmod(&k, m);
        Ca::load(&c, &k).unwrap();
    }
}

#[test]
fn load_refuses_a_key_symlinked_out_of_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (c, real) = saved(&elsewhere);
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    let k = ca_dir.join("root.key");
    symlink(&real, &k).unwrap();
    let e = Ca::load(&c, &k).unwrap_err().to_string();
    assert!(e.contains("root.key") && e.contains("symlink"), "{e}");
    // Relative, through `..`: the same.
    std::fs::remove_file(&k).unwrap();
    symlink("../elsewhere/ca.key", &k).unwrap();
    let e = Ca::load(&c, &k).unwrap_err().to_string();
    assert!(e.contains("symlink"), "{e}");
}

/// A Kubernetes Secret volume: `root.key -> ..data/root.key`, `..data -> ..<timestamp>`,
/// the files in the timestamped directory with the volume's `defaultMode` (0400 in
/// deploy/self-managed). The links stay inside the directory, so the key loads.
#[test]
fn load_accepts_a_kubernetes_secret_volume() {
    let dir = tempfile::tempdir().unwrap();
    let ts = dir.path().join("..2026_01_01_00_00_00.123456789");
    std::fs::create_dir(&ts).unwrap();
    let (c, k) = (ts.join("root.pem"), ts.join("root.key"));
    Ca::generate(SystemTime::now())
        .unwrap()
        .save(&c, &k)
        .unwrap();
    chmod(&k, 0o400);
    symlink("..2026_01_01_00_00_00.123456789", dir.path().join("..data")).unwrap();
    symlink("..data/root.key", dir.path().join("root.key")).unwrap();
    symlink("..data/root.pem", dir.path().join("root.pem")).unwrap();
    let ca = Ca::load(&dir.path().join("root.pem"), &dir.path().join("root.key")).unwrap();
    assert_eq!(
        ca.root(),
        &CertificateDer::from_pem_file(&c).unwrap(),
        "the root read through the links"
    );
}

#[test]
fn save_writes_the_key_from_the_parsed_key() {
    // The PEM is not kept: saving a loaded CA re-encodes its key, which must be the same key.
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = saved(dir.path());
    let loaded = Ca::load(&c, &k).unwrap();
    let (c2, k2) = (dir.path().join("again.pem"), dir.path().join("again.key"));
    loaded.save(&c2, &k2).unwrap();
    assert_eq!(std::fs::read(&k).unwrap(), std::fs::read(&k2).unwrap());
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(&c2).unwrap());
    assert_eq!(mode(&k2), 0o600);
}

#[test]
fn a_lifetime_past_the_last_x509_date_is_an_error_not_a_panic_or_an_expired_leaf() {
    // `--cert-ttl` is operator input: a TTL that overflows the clock must not panic the
    // control thread, and one that ends past 9999-12-31 (the last X.509 date) must not give
    // a leaf whose notAfter silently became 1970.
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let id = Identity::new("cluster.local", "ns1", "sa1");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // A CSR as the Istio CA client sends (`certs::caclient::csr_pem`), made here so that
    // `identity` does not reach up into `certs`.
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(ca.sign_csr(&csr, &id, now, Duration::from_secs(60)).is_ok());
    for ttl in [
        Duration::from_secs(u64::MAX),
        Duration::from_secs(20_000 * 365 * 24 * 3600),
    ] {
        match ca.issue(&id, now, ttl) {
            Err(e) => assert!(e.to_string().contains("--cert-ttl"), "{e}"),
            Ok(c) => panic!("issued a leaf valid until {:?}", c.not_after),
        }
        assert!(ca.sign_csr(&csr, &id, now, ttl).is_err());
        assert!(ca.issue_server(&["x".into()], &[], now, ttl).is_err());
    }
    // The longest that fits still works.
    assert!(
        ca.issue(&id, now, Duration::from_secs(7000 * 365 * 24 * 3600))
            .is_ok()
    );
}
