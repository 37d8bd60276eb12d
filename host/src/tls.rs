//! The engine link over TLS, both ends authenticated (mutual TLS).
//!
//! Without it, anyone who reaches the engine port can take the controller
//! slot, read every caller's number in the snapshot and drop calls. With
//! it, the host accepts only an engine whose certificate chains to its
//! `ca` and names the engine (`server_name`, default: the host part of
//! `engine`), and the engine accepts only hosts whose certificate chains to
//! its client CA. Files are PEM. rustls with the `ring` provider: TLS 1.3
//! and 1.2, no OpenSSL.
//!
//! [`generate`] writes a throwaway PKI (a CA, an engine and a host
//! certificate) for `legsync tls init`, the TLS bench and the tests.

use anyhow::{Context, bail};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One side's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA bundle the peer's certificate must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's side: trusts `files.ca`, presents `files.cert`.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .with_context(|| mismatch(files))?;
    Ok(Arc::new(config))
}

/// The engine's side (engine-sim): presents `files.cert`, and asks every
/// host for a certificate chaining to `files.ca`.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca)?),
        provider(),
    )
    .build()
    .context("cannot build the client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .with_context(|| mismatch(files))?;
    Ok(Arc::new(config))
}

fn mismatch(files: &TlsFiles) -> String {
    format!(
        "the TLS key {} does not match the certificate {}",
        files.key.display(),
        files.cert.display()
    )
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the TLS certificates {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("a certificate of {} is not a usable CA", path.display()))?;
    }
    Ok(roots)
}

/// When one side's certificates stop being valid, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// This side's own certificate (the first of its chain).
    pub cert: i64,
    /// The earliest of the CA bundle's certificates.
    pub ca: i64,
}

/// Days before expiry from which a certificate is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The expiry of `files`' certificate and CA bundle; an expired one is an
/// error naming the file and the date (the peer would refuse it, or every
/// certificate it signed, at the next handshake).
pub fn expiry(files: &TlsFiles) -> anyhow::Result<Expiry> {
    let now = crate::model::now_ms() as i64 / 1000;
    let earliest = |path: &Path, first_only: bool| -> anyhow::Result<i64> {
        let mut earliest: Option<(i64, String)> = None;
        for der in certs(path)?
            .iter()
            .take(if first_only { 1 } else { usize::MAX })
        {
            let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
                anyhow::anyhow!(
                    "{} holds a certificate that cannot be parsed: {e}",
                    path.display()
                )
            })?;
            let not_after = cert.validity().not_after;
            if earliest
                .as_ref()
                .is_none_or(|(t, _)| not_after.timestamp() < *t)
            {
                earliest = Some((not_after.timestamp(), not_after.to_string()));
            }
        }
        let (at, date) = earliest.context("no certificate")?;
        if at <= now {
            bail!(
                "the certificate in {} expired on {date}: renew it",
                path.display()
            );
        }
        if at - now < EXPIRY_WARNING_DAYS * 86_400 {
            tracing::warn!(file = %path.display(), expires = %date, "a TLS certificate expires within {EXPIRY_WARNING_DAYS} days");
        }
        Ok(at)
    };
    Ok(Expiry {
        cert: earliest(&files.cert, true)?,
        ca: earliest(&files.ca, false)?,
    })
}

/// When `cert` stops being valid, in Unix seconds; `None` if it cannot
/// be parsed (the handshake that produced it has checked it already).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The engine's files: its certificate, and the CA it trusts for hosts.
    pub engine: TlsFiles,
    /// The host's files: its certificate, and the CA it trusts for engines.
    pub host: TlsFiles,
}

/// How long [`generate`]'s CA and its certificates are valid: a trial PKI
/// should not outlive the trial (rcgen's default is the year 4096).
pub const TRIAL_CA_DAYS: i64 = 3650;
pub const TRIAL_LEAF_DAYS: i64 = 365;

/// Writes a CA (`ca.pem`), an engine certificate for `engine_names`
/// (`engine.pem`, `engine.key`) and a host certificate (`host.pem`,
/// `host.key`), all signed by the CA, into `dir`. The CA's key is not
/// kept: to add a host, generate again. For trials and tests; production
/// certificates come from the operator's own PKI.
pub fn generate(dir: &Path, engine_names: &[String]) -> anyhow::Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(TRIAL_CA_DAYS);
    // Named apart from every other trial CA: a verifier finds a
    // certificate's issuer by name.
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("legsync trial CA {}", crate::model::now_us()),
    );
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    let ca_path = write("ca.pem", &ca_cert.pem())?;
    let leaf = |stem: &str, names: Vec<String>| -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, stem);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(TRIAL_LEAF_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((
            write(&format!("{stem}.pem"), &cert.pem())?,
            write(&format!("{stem}.key"), &key.serialize_pem())?,
        ))
    };
    let (engine_cert, engine_key) = leaf("engine", engine_names.to_vec())?;
    let (host_cert, host_key) = leaf("host", vec!["legsync-host".into()])?;
    #[cfg(unix)]
    for key in [&engine_key, &host_key] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(Pki {
        engine: TlsFiles {
            ca: ca_path.clone(),
            cert: engine_cert,
            key: engine_key,
        },
        host: TlsFiles {
            ca: ca_path,
            cert: host_cert,
            key: host_key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_each_certificate_and_refuses_an_expired_one() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), &["engine-1".into()]).unwrap();
        let now = crate::model::now_ms() as i64 / 1000;
        let expiry = expiry(&pki.host).unwrap();
        let days = |at: i64| (at - now + 3_600) / 86_400;
        assert_eq!(days(expiry.cert), TRIAL_LEAF_DAYS);
        assert_eq!(days(expiry.ca), TRIAL_CA_DAYS);

        // A certificate that expired yesterday is refused, naming its file.
        let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
        let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_before = yesterday - time::Duration::days(30);
        params.not_after = yesterday;
        let key = rcgen::KeyPair::generate().unwrap();
        let old = params.self_signed(&key).unwrap();
        let old_path = dir.path().join("old.pem");
        std::fs::write(&old_path, old.pem()).unwrap();
        let files = TlsFiles {
            cert: old_path,
            ..pki.host.clone()
        };
        let error = format!("{:#}", super::expiry(&files).unwrap_err());
        assert!(
            error.contains("old.pem expired on") && error.contains("renew it"),
            "{error}"
        );
    }

    #[test]
    fn generated_files_make_both_configs_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), &["engine-1".into(), "127.0.0.1".into()]).unwrap();
        client_config(&pki.host).unwrap();
        server_config(&pki.engine).unwrap();
        let mismatched = TlsFiles {
            key: pki.engine.key.clone(),
            ..pki.host.clone()
        };
        let error = format!("{:#}", client_config(&mismatched).unwrap_err());
        assert!(error.contains("does not match the certificate"), "{error}");
        let missing = TlsFiles {
            ca: dir.path().join("nope.pem"),
            ..pki.host
        };
        let error = format!("{:#}", client_config(&missing).unwrap_err());
        assert!(error.contains("nope.pem"), "{error}");
    }
}
