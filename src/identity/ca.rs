//! The built-in certificate authority: the embedded default when no Istio CA is configured.
//!
//! Owns: loading a root (certificate + key PEM) from files or generating one, saving it, and
//! issuing ECDSA P-256 leaf certificates for SPIFFE identities (URI SAN,
//! serverAuth+clientAuth). Time is passed in (`now`), never read here, so issuance is
//! deterministic to test.
//!
//! The key file: [`Ca::save`] writes each file to a new temporary file in the same directory
//! (`O_EXCL`, mode 0600 from creation), sets its final mode (key 0600, certificate 0644),
//! fsyncs it, renames it over the target and fsyncs the directory, so a crash leaves the old
//! file or the new one, never a torn or group-readable key; it refuses a target that is a
//! symlink. [`Ca::load`] refuses a key file that group or others can access (any of 0o077,
//! as ssh does) and a symlinked key whose target is outside the link's own directory (a
//! Kubernetes Secret volume's `root.key -> ..data/root.key` stays inside and loads). The key
//! PEM lives only while it is read or written, in a buffer wiped on drop (`zeroize`; rcgen's
//! own temporaries while it encodes or decodes are out of our reach); a `Ca` keeps the
//! parsed key only.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::Identity;

/// Errors of the built-in CA, aimed at the operator.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write CA file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "refusing to write CA file {path}: it is a symlink, and the file would go wherever it \
         points; remove the link or name a regular file"
    )]
    WriteSymlink { path: String },
    #[error("CA file {path} is not a regular file")]
    NotAFile { path: String },
    #[error(
        "refusing to load CA key file {path}: it is a symlink to {target}, outside its own \
         directory; point --ca-key at the key file itself"
    )]
    KeySymlink { path: String, target: String },
    #[error(
        "CA key file {path} has mode {mode:04o}, so group or others can access it: run \
         `chmod 600 {path}` (in a Kubernetes Secret volume, set defaultMode: 0400)"
    )]
    KeyMode { path: String, mode: u32 },
    #[error("CA file {path} is not a usable PEM {what}: {reason}")]
    BadPem {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("identity {0} cannot be written as a URI SAN")]
    BadSan(String),
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    #[error(
        "a certificate lifetime of {ttl:?} from now ends past 9999-12-31, the last date X.509 \
         can hold: lower --cert-ttl (Istio's default is 24h)"
    )]
    Lifetime { ttl: Duration },
}

/// A certificate and its key, issued for one workload identity.
#[derive(Debug)]
pub struct IssuedCert {
    pub identity: Identity,
    /// What this workload presents: the leaf first, then any intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The trust anchors peers are verified against (the CA's root, or the roots an Istio
    /// CA returned with this certificate).
    pub roots: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this process got it.
    pub issued_at: SystemTime,
}

impl IssuedCert {
    /// When this certificate should be replaced: half-way through its lifetime, as ztunnel
    /// does — counted from when it was issued, not from a back-dated `notBefore` (CAs
    /// back-date it for clock skew: istiod by 2 minutes, which with a short TTL would put
    /// the half-way point in the past and rotate without end).
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.not_before.max(self.issued_at);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }
}

/// The root CA: signs workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca{..}")
    }
}

impl Ca {
    /// Generates a fresh root (ECDSA P-256, valid 10 years from `now`).
    pub fn generate(now: SystemTime) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh");
        dn.push(DnType::CommonName, "ringmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - Duration::from_secs(60));
        params.not_after = to_time(now + Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        let root_pem = cert.pem();
        let root_der = cert.der().clone();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
        })
    }

    /// An intermediate CA under this one (ECDSA P-256, valid a year): its `root()` is the
    /// intermediate's own certificate, which it signs leaves with. (The lab's control plane
    /// signs with one, so chains carry an intermediate as a real mesh CA's may.)
    pub fn intermediate(&self, now: SystemTime) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh");
        dn.push(DnType::CommonName, "ringmesh intermediate CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - Duration::from_secs(60));
        params.not_after = to_time(now + Duration::from_secs(365 * 24 * 3600));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Ca {
            root_pem: cert.pem(),
            root_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root from PEM files (certificate, PKCS#8 key). The key file must be a regular
    /// file only its owner can access; see the module docs for symlinks.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        let root_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Read {
            path: cert_path.display().to_string(),
            source,
        })?;
        let key_pem = read_key_file(key_path)?;
        let bad = |p: &Path, what, reason: String| CaError::BadPem {
            path: p.display().to_string(),
            what,
            reason,
        };
        let key_str = std::str::from_utf8(&key_pem)
            .map_err(|e| bad(key_path, "private key", e.to_string()))?;
        let key =
            KeyPair::from_pem(key_str).map_err(|e| bad(key_path, "private key", e.to_string()))?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| bad(cert_path, "certificate", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key)
            .map_err(|e| bad(cert_path, "CA certificate", e.to_string()))?;
        Ok(Ca {
            issuer,
            root_der,
            root_pem,
        })
    }

    /// Writes the root certificate (mode 0644) and key (mode 0600) as PEM files, each
    /// replaced atomically; a path that is a symlink is refused.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        write_atomic(cert_path, self.root_pem.as_bytes(), 0o644)?;
        let key_pem = Zeroizing::new(self.issuer.key().serialize_pem());
        write_atomic(key_path, key_pem.as_bytes(), 0o600)
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf certificate for `identity`, valid from `now` (minus a minute of clock
    /// skew) for `ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let (params, not_before, not_after) = leaf_params(identity, now, ttl)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            identity: identity.clone(),
            chain: vec![cert.der().clone()],
            roots: vec![self.root_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
            issued_at: now,
        })
    }

    /// Signs a PEM certificate signing request (as Istio's CA does for `CreateCertificate`):
    /// the request's signature must verify; its subject and SANs are ignored, and the leaf
    /// gets exactly `identity` as its URI SAN. Returns the leaf (DER).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (params, _, _) = leaf_params(identity, now, ttl)?;
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.der().clone())
    }

    /// Issues a TLS server certificate for DNS names and IP addresses (the lab's control
    /// plane serves xDS and the CA with one).
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns.first().map(String::as_str).unwrap_or("server"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (not_before, not_after) = lifetime(now, ttl)?;
        params.not_before = to_time(not_before);
        params.not_after = to_time(not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.der().clone(), self.root_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

/// A workload leaf's parameters: empty subject but O=<trust domain>, one URI SAN (the
/// identity, critical as Istio marks it), digitalSignature+keyEncipherment,
/// serverAuth+clientAuth.
fn leaf_params(
    identity: &Identity,
    now: SystemTime,
    ttl: Duration,
) -> Result<(CertificateParams, SystemTime, SystemTime), CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, identity.trust_domain.as_str());
    params.distinguished_name = dn;
    let uri = identity.to_string();
    params.subject_alt_names = vec![SanType::URI(
        uri.clone().try_into().map_err(|_| CaError::BadSan(uri))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (not_before, not_after) = lifetime(now, ttl)?;
    params.not_before = to_time(not_before);
    params.not_after = to_time(not_after);
    Ok((params, not_before, not_after))
}

/// A leaf's validity: from a minute before `now` (clock skew) for `ttl`. `ttl` is operator
/// input (`--cert-ttl`): an end that overflows the clock, or passes the last date X.509 (and
/// `to_time`) can hold, is an error — not a panic, nor a leaf whose notAfter became 1970.
fn lifetime(now: SystemTime, ttl: Duration) -> Result<(SystemTime, SystemTime), CaError> {
    let not_after = now.checked_add(ttl).ok_or(CaError::Lifetime { ttl })?;
    let representable = match not_after.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs())
            .is_ok_and(|s| time::OffsetDateTime::from_unix_timestamp(s).is_ok()),
        // Before 1970 (a clock set far back): `to_time` writes the epoch, as it always did.
        Err(_) => true,
    };
    if !representable {
        return Err(CaError::Lifetime { ttl });
    }
    let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
    Ok((not_before, not_after))
}

/// The largest key file read (a PKCS#8 P-256 key is ~250 bytes of PEM; RSA-4096 ~3.3 KB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads the key file into a buffer wiped on drop, after checking it (module docs).
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let shown = || path.display().to_string();
    let read_err = |source| CaError::Read {
        path: shown(),
        source,
    };
    let target = key_target(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                // Replaced by a link between the check and the open.
                CaError::KeySymlink {
                    path: shown(),
                    target: target.display().to_string(),
                }
            } else {
                read_err(e)
            }
        })?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(CaError::NotAFile { path: shown() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyMode {
            path: shown(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(CaError::BadPem {
            path: shown(),
            what: "private key",
            reason: format!("larger than {MAX_KEY_FILE} bytes"),
        });
    }
    // Room for the whole file up front, so no partly filled buffer is reallocated (and left
    // unwiped) while reading.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1024));
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    Ok(buf)
}

/// The file to open for the key at `path`: `path` itself, or, when it is a symlink, its
/// resolved target if that is inside `path`'s own directory.
fn key_target(path: &Path) -> Result<PathBuf, CaError> {
    let read_err = |source| CaError::Read {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(read_err)?;
    if !meta.file_type().is_symlink() {
        return Ok(path.to_path_buf());
    }
    let dir = std::fs::canonicalize(parent_dir(path)).map_err(read_err)?;
    let target = std::fs::canonicalize(path).map_err(read_err)?;
    if target.starts_with(&dir) && target != dir {
        Ok(target)
    } else {
        Err(CaError::KeySymlink {
            path: path.display().to_string(),
            target: target.display().to_string(),
        })
    }
}

/// Replaces `path` with `data` (mode `mode`) by a temporary file in the same directory,
/// fsync and rename; refuses a `path` that is a symlink or not a regular file.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let shown = || path.display().to_string();
    let err = |source| CaError::Write {
        path: shown(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(CaError::WriteSymlink { path: shown() }),
        Ok(m) if !m.is_file() => return Err(CaError::NotAFile { path: shown() }),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let name = path.file_name().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let dir = parent_dir(path);
    let (tmp, mut file) = create_temp(dir, &name.to_string_lossy()).map_err(err)?;
    let done = (|| {
        file.write_all(data)?;
        // The exact mode, whatever the umask made of the creation mode.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if done.is_err() {
        // Already renamed, or never written: either way nothing to keep.
        let _ = std::fs::remove_file(&tmp);
    }
    done.map_err(err)
}

/// A new file `.<name>.<pid>.<random>.tmp` in `dir`, created exclusively with mode 0600
/// (never through a symlink).
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary file name left")))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A time as X.509 writes it (whole seconds). Out of range is the epoch: operator-chosen
/// lifetimes are checked by [`lifetime`] first.
fn to_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
