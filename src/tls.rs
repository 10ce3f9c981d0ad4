//! TLS setup: the rustls server configuration built from a certificate
//! chain and key in PEM files, and its reload (SIGHUP) behind an `ArcSwap`
//! so workers pick up the new one at their next accept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server configuration workers load at each accept.
pub type SharedConfig = Arc<ArcSwap<ServerConfig>>;

/// Why the certificate or key could not be used; names the file.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Reads `cert` (PEM chain) and `key` (PEM private key) and builds a TLS
/// 1.2/1.3 server configuration offering ALPN `http/1.1`.
///
/// # Errors
/// A missing or unreadable file, no certificate or key in it, or a key that
/// does not match the certificate; the message names the file.
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError(format!("tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "tls_cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            TlsError(format!(
                "tls_key {} does not match tls_cert {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate and key files, kept to reload them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Re-reads the files into `shared`; on failure the old configuration stays
/// and the error is returned.
///
/// # Errors
/// See [`load`].
pub fn reload(files: &TlsFiles, shared: &SharedConfig) -> Result<(), TlsError> {
    let config = load(&files.cert, &files.key)?;
    shared.store(Arc::new(config));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, ck.cert.pem()).unwrap();
        std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn loads_a_pair_and_names_the_bad_file() {
        let dir = std::env::temp_dir().join(format!("tickwire-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = write_pair(&dir, "a");
        let b = write_pair(&dir, "b");
        let shared: SharedConfig = Arc::new(ArcSwap::from_pointee(load(&a.cert, &a.key).unwrap()));
        let missing = dir.join("missing.crt");
        let e = load(&missing, &a.key).unwrap_err();
        assert!(e.0.contains("missing.crt"), "{e}");
        let e = load(&a.cert, &b.key).unwrap_err();
        assert!(e.0.contains("b.key"), "{e}");
        // A failed reload keeps the old configuration.
        let old = shared.load_full();
        let bad = TlsFiles {
            cert: missing,
            key: a.key.clone(),
        };
        assert!(reload(&bad, &shared).is_err());
        assert!(Arc::ptr_eq(&old, &shared.load_full()));
        reload(&b, &shared).unwrap();
        assert!(!Arc::ptr_eq(&old, &shared.load_full()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
