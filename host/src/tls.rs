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

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The engine's files: its certificate, and the CA it trusts for hosts.
    pub engine: TlsFiles,
    /// The host's files: its certificate, and the CA it trusts for engines.
    pub host: TlsFiles,
}

/// Writes a CA (`ca.pem`), an engine certificate for `engine_names`
/// (`engine.pem`, `engine.key`) and a host certificate (`host.pem`,
/// `host.key`), all signed by the CA, into `dir`. The CA's key is not
/// kept: to add a host, generate again. For trials and tests; production
/// certificates come from the operator's own PKI.
pub fn generate(dir: &Path, engine_names: &[String]) -> anyhow::Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
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
