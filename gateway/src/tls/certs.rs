//! Certificates: a `proto::Certificate` (PEM chain and key, from files or
//! inline) loaded into a rustls `CertifiedKey`, with its expiry and DNS names
//! read by x509-parser. Runs on the control thread while a snapshot is built;
//! workers only ever see the finished `Arc`.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::config::proto;

/// The one crypto provider of every TLS object the gateway builds.
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A certificate chain with its private key, ready to serve.
#[derive(Debug)]
pub struct LoadedCertificate {
    pub name: String,
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
    /// The leaf's DNS subject alternative names, as written in it.
    pub dns_names: Vec<String>,
    /// What the PEM files looked like when read; None for inline PEM.
    files: Option<FileStamps>,
}

/// Identity of the files a certificate was read from, so a reload notices a
/// certificate replaced on disk under the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamps {
    chain: Option<FileStamp>,
    key: Option<FileStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &str) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
        })
    }
}

impl FileStamps {
    fn of(source: &proto::Certificate) -> Option<FileStamps> {
        let stamp = |path: &str| (!path.is_empty()).then(|| FileStamp::of(path)).flatten();
        let stamps = FileStamps {
            chain: stamp(&source.cert_chain_file),
            key: stamp(&source.private_key_file),
        };
        (stamps.chain.is_some() || stamps.key.is_some()).then_some(stamps)
    }
}

/// Why a certificate cannot be loaded, and which field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateError {
    /// The field of `Certificate` at fault (`cert_chain_pem`, `private_key_file`, ...).
    pub field: &'static str,
    pub message: String,
}

impl CertificateError {
    fn chain(source: &proto::Certificate, message: impl Into<String>) -> CertificateError {
        CertificateError {
            field: if source.cert_chain_file.is_empty() {
                "cert_chain_pem"
            } else {
                "cert_chain_file"
            },
            message: message.into(),
        }
    }

    fn key(source: &proto::Certificate, message: impl Into<String>) -> CertificateError {
        CertificateError {
            field: if source.private_key_file.is_empty() {
                "private_key_pem"
            } else {
                "private_key_file"
            },
            message: message.into(),
        }
    }
}

impl LoadedCertificate {
    /// Reads, parses and checks a certificate: the chain must hold at least
    /// one certificate (leaf first), the key must parse (PKCS#8, PKCS#1 or
    /// SEC1; ECDSA, RSA or Ed25519) and match the leaf. An expired leaf is
    /// logged and served, unless `refuse_expired`. Validation has already
    /// checked that exactly one source of each part is set.
    pub fn load(source: &proto::Certificate) -> Result<LoadedCertificate, CertificateError> {
        // Stamped before reading: a file replaced while it is read looks
        // changed at the next reload rather than unchanged.
        let files = FileStamps::of(source);
        let chain_pem = read_part(&source.cert_chain_file, &source.cert_chain_pem)
            .map_err(|message| CertificateError::chain(source, message))?;
        let key_pem = read_part(&source.private_key_file, &source.private_key_pem)
            .map_err(|message| CertificateError::key(source, message))?;
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CertificateError::chain(source, format!("invalid PEM certificate chain: {error}")))?;
        let Some(leaf) = chain.first() else {
            return Err(CertificateError::chain(
                source,
                "no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first)",
            ));
        };
        let (not_after, dns_names) = leaf_facts(leaf).map_err(|message| CertificateError::chain(source, message))?;
        for (index, intermediate) in chain.iter().enumerate().skip(1) {
            x509_parser::parse_x509_certificate(intermediate).map_err(|error| {
                CertificateError::chain(
                    source,
                    format!("certificate {index} of the chain does not parse: {error}"),
                )
            })?;
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
            CertificateError::key(
                source,
                format!("no private key found (expected PEM PKCS#8, PKCS#1 or SEC1): {error}"),
            )
        })?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|error| CertificateError::key(source, format!("unusable private key: {error}")))?;
        let key = CertifiedKey::new(chain, signing_key);
        match key.keys_match() {
            // A key type whose public half rustls cannot derive cannot be
            // compared; the handshake would still fail loudly if it differs.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertificateError::key(source, "key does not match the certificate"));
            }
            Err(error) => {
                return Err(CertificateError::chain(
                    source,
                    format!("cannot check the key against the certificate: {error}"),
                ))
            }
        }
        if let Err(expired) = not_after.duration_since(SystemTime::now()) {
            let ago = humantime::format_duration(Duration::from_secs(expired.duration().as_secs()));
            if source.refuse_expired {
                return Err(CertificateError::chain(
                    source,
                    format!("certificate expired {ago} ago (refuse_expired is set)"),
                ));
            }
            tracing::warn!(certificate = %source.name, expired_ago = %ago, "serving an expired certificate");
        }
        Ok(LoadedCertificate {
            name: source.name.clone(),
            key: Arc::new(key),
            not_after,
            dns_names,
            files,
        })
    }

    /// Whether the files `source` names (if any) look as they did when this
    /// certificate was read from them: with an unchanged message, loading
    /// again would give this certificate.
    pub(crate) fn files_unchanged(&self, source: &proto::Certificate) -> bool {
        self.files == FileStamps::of(source)
    }
}

/// The PEM bytes of one part: a file (relative paths from the working
/// directory) or the inline text.
fn read_part(file: &str, pem: &str) -> Result<Vec<u8>, String> {
    if file.is_empty() {
        Ok(pem.as_bytes().to_vec())
    } else {
        std::fs::read(Path::new(file)).map_err(|error| format!("cannot read {file}: {error}"))
    }
}

/// The leaf's not_after and DNS names.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(SystemTime, Vec<String>), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|error| format!("leaf certificate does not parse: {error}"))?;
    let timestamp = parsed.validity().not_after.timestamp();
    let not_after = match u64::try_from(timestamp) {
        Ok(seconds) => SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(timestamp.unsigned_abs()),
    };
    let dns_names = match parsed.subject_alternative_name() {
        Ok(Some(names)) => names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(error) => return Err(format!("leaf certificate has an invalid subjectAltName: {error}")),
    };
    Ok((not_after, dns_names))
}
