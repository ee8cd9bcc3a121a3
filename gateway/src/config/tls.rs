//! The TLS parts of the config: listener TLS settings, certificates (read,
//! parsed and checked here, on the control thread; reuse of unchanged ones
//! is the change-set path's business), and host TLS (certificate reference,
//! client CA bundle, the HSTS header value).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::defaults;
use super::error::Errors;
use super::proto;
use super::settings::duration;
use crate::tls::{ClientAuth, LoadedCertificate};

/// rustls' aws-lc-rs ticketer, which each rotation creates, rolls its own key
/// every 6 hours and keeps one previous key: a key lives at most 12 hours, so
/// a longer lifetime could not be honoured.
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Keys rotate at half the lifetime, in whole seconds.
const MIN_TICKET_LIFETIME: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSniPolicy {
    /// Serve the listener's default certificate.
    DefaultCertificate,
    /// Abort the handshake (unrecognized_name).
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsSettings {
    pub default_certificate: Option<String>,
    pub unknown_sni: UnknownSniPolicy,
    pub min_version: TlsVersion,
    /// Keys rotate at half of it; a ticket is accepted for at most this long.
    pub ticket_lifetime: Duration,
    /// TLS 1.2 session-id cache entries; 0 disables the cache.
    pub session_cache_size: usize,
    pub handshake_timeout: Duration,
}

/// A TLS listener's settings with the index of its listener.
pub(crate) struct ListenerTlsPlan {
    pub index: usize,
    pub name: String,
    pub settings: ListenerTlsSettings,
}

/// A host's TLS, resolved: its certificate and client verification.
pub(crate) struct HostTlsPlan {
    pub key: Arc<CertifiedKey>,
    pub client_auth: Option<ClientAuth>,
}

/// Converts every TLS listener's settings. `certificates` says whether a
/// certificate name is configured (loaded or not); `hosts_have_certificates`
/// says whether SNI can select a certificate at all.
pub(crate) fn listeners(
    errors: &mut Errors,
    listeners: &[proto::Listener],
    certificates: &dyn Fn(&str) -> bool,
    hosts_have_certificates: bool,
) -> Vec<ListenerTlsPlan> {
    listeners
        .iter()
        .enumerate()
        .filter_map(|(index, listener)| {
            let tls = listener.tls.as_ref()?;
            let path = format!("listeners[{index}].tls");
            Some(ListenerTlsPlan {
                index,
                name: listener.name.clone(),
                settings: listener_settings(errors, &path, tls, certificates, hosts_have_certificates),
            })
        })
        .collect()
}

fn listener_settings(
    errors: &mut Errors,
    path: &str,
    tls: &proto::ListenerTls,
    certificates: &dyn Fn(&str) -> bool,
    hosts_have_certificates: bool,
) -> ListenerTlsSettings {
    let default_certificate = match tls.default_certificate.as_str() {
        "" => None,
        name => {
            if !certificates(name) {
                errors.add(
                    format!("{path}.default_certificate"),
                    format!("unknown certificate \"{name}\""),
                );
            }
            Some(name.to_owned())
        }
    };
    let unknown_sni = match proto::UnknownSni::try_from(tls.unknown_sni) {
        Ok(proto::UnknownSni::DefaultCertificate) => UnknownSniPolicy::DefaultCertificate,
        Ok(proto::UnknownSni::Reject) => UnknownSniPolicy::Reject,
        Err(_) => {
            errors.add(
                format!("{path}.unknown_sni"),
                format!("unknown policy {}", tls.unknown_sni),
            );
            UnknownSniPolicy::Reject
        }
    };
    if unknown_sni == UnknownSniPolicy::DefaultCertificate && default_certificate.is_none() {
        errors.add(
            format!("{path}.default_certificate"),
            if hosts_have_certificates {
                "required when unknown_sni is default_certificate (the default); set one or use unknown_sni: reject"
            } else {
                "required: no host has a certificate, so this listener would have none to serve"
            },
        );
    } else if default_certificate.is_none() && !hosts_have_certificates {
        errors.add(
            path,
            "no certificate to serve: set default_certificate or give hosts a tls.certificate",
        );
    }
    let min_version = match tls.min_version.as_str() {
        "" | "1.2" => TlsVersion::Tls12,
        "1.3" => TlsVersion::Tls13,
        other => {
            errors.add(
                format!("{path}.min_version"),
                format!("invalid TLS version \"{other}\": expected \"1.2\" or \"1.3\""),
            );
            TlsVersion::Tls12
        }
    };
    let ticket_lifetime = duration(
        errors,
        || format!("{path}.ticket_lifetime"),
        &tls.ticket_lifetime,
        defaults::TICKET_LIFETIME,
        false,
    );
    if !(MIN_TICKET_LIFETIME..=MAX_TICKET_LIFETIME).contains(&ticket_lifetime) {
        errors.add(
            format!("{path}.ticket_lifetime"),
            format!(
                "must be from {} to {} (the ticket key provider keeps a key at most 12h)",
                humantime::format_duration(MIN_TICKET_LIFETIME),
                humantime::format_duration(MAX_TICKET_LIFETIME)
            ),
        );
    }
    ListenerTlsSettings {
        default_certificate,
        unknown_sni,
        min_version,
        ticket_lifetime,
        session_cache_size: tls
            .session_cache_size
            .map_or(defaults::SESSION_CACHE_SIZE, |size| size as usize),
        handshake_timeout: duration(
            errors,
            || format!("{path}.handshake_timeout"),
            &tls.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
            false,
        ),
    }
}

/// Checks names and sources of every certificate, then loads each one that
/// is well formed. Errors name the hosts using the certificate.
pub(crate) fn certificates(
    errors: &mut Errors,
    certificates: &[proto::Certificate],
    hosts: &[proto::VirtualHost],
) -> HashMap<String, Arc<LoadedCertificate>> {
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(certificates.len());
    let mut loaded = HashMap::with_capacity(certificates.len());
    for (index, certificate) in certificates.iter().enumerate() {
        let path = format!("certificates[{index}]");
        let before = errors.len();
        if !certificate.name.is_empty() {
            if let Some(first) = names.insert(&certificate.name, index) {
                errors.add(
                    format!("{path}.name"),
                    format!(
                        "duplicate certificate name \"{}\" (also certificates[{first}])",
                        certificate.name
                    ),
                );
            }
        }
        certificate_fields(errors, &path, certificate);
        if errors.len() > before {
            continue;
        }
        match LoadedCertificate::load(certificate) {
            Ok(certificate) => {
                loaded.insert(certificate.name.clone(), Arc::new(certificate));
            }
            Err(error) => errors.add(
                format!("{path}.{}", error.field),
                format!("{}{}", error.message, used_by(hosts, &certificate.name)),
            ),
        }
    }
    loaded
}

/// The checks of one certificate message that need nothing else: a name and
/// exactly one source for the chain and for the key.
pub(crate) fn certificate_fields(errors: &mut Errors, path: &str, certificate: &proto::Certificate) {
    if certificate.name.is_empty() {
        errors.add(format!("{path}.name"), "must not be empty");
    }
    one_source(
        errors,
        path,
        ("cert_chain_file", &certificate.cert_chain_file),
        ("cert_chain_pem", &certificate.cert_chain_pem),
        true,
    );
    one_source(
        errors,
        path,
        ("private_key_file", &certificate.private_key_file),
        ("private_key_pem", &certificate.private_key_pem),
        true,
    );
}

/// ` (used by host "a", "b")` for the hosts naming `certificate`; scanned
/// only when there is an error to explain.
fn used_by(hosts: &[proto::VirtualHost], certificate: &str) -> String {
    let users: Vec<String> = hosts
        .iter()
        .enumerate()
        .filter(|(_, host)| host.tls.as_ref().is_some_and(|tls| tls.certificate == certificate))
        .map(|(index, host)| super::validate::host_name(index, host))
        .collect();
    users_suffix(&users)
}

/// ` (used by host "a", "b")`, the first three and how many more; empty
/// without users.
pub(crate) fn users_suffix(users: &[impl AsRef<str>]) -> String {
    const SHOWN: usize = 3;
    let users: Vec<String> = users.iter().map(|user| format!("\"{}\"", user.as_ref())).collect();
    match users.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" (used by host {})", users.join(", ")),
        n => format!(" (used by host {} and {} more)", users[..SHOWN].join(", "), n - SHOWN),
    }
}

/// At most one (exactly one when `required`) of two alternative fields.
fn one_source(errors: &mut Errors, path: &str, a: (&str, &str), b: (&str, &str), required: bool) {
    match (a.1.is_empty(), b.1.is_empty()) {
        (true, true) if required => errors.add(path, format!("one of {}, {} is required", a.0, b.0)),
        (false, false) => errors.add(
            format!("{path}.{}", b.0),
            format!("only one of {}, {} may be set", a.0, b.0),
        ),
        _ => {}
    }
}

/// Checks a host's TLS and resolves its certificate. Returns the plan (None
/// when the host names no certificate or on error) and the HSTS header value.
/// `configured` says whether a certificate name is configured, `loaded`
/// gives those that loaded (a failed one is reported on the certificate, not
/// again here).
pub(crate) fn host(
    errors: &mut Errors,
    path: &str,
    tls: &proto::HostTls,
    configured: &dyn Fn(&str) -> bool,
    loaded: &dyn Fn(&str) -> Option<Arc<LoadedCertificate>>,
) -> (Option<HostTlsPlan>, Option<Arc<str>>) {
    let path = format!("{path}.tls");
    let key = match tls.certificate.as_str() {
        "" => None,
        name if !configured(name) => {
            errors.add(format!("{path}.certificate"), format!("unknown certificate \"{name}\""));
            None
        }
        name => loaded(name).map(|certificate| Arc::clone(&certificate.key)),
    };
    one_source(
        errors,
        &path,
        ("client_ca_file", &tls.client_ca_file),
        ("client_ca_pem", &tls.client_ca_pem),
        false,
    );
    let has_client_ca = !tls.client_ca_file.is_empty() || !tls.client_ca_pem.is_empty();
    let client_auth = if has_client_ca {
        if tls.certificate.is_empty() {
            errors.add(
                format!("{path}.certificate"),
                "required with a client CA: client certificates are verified per SNI name",
            );
        }
        client_auth(errors, &path, tls)
    } else {
        if tls.client_certificate_optional {
            errors.add(
                format!("{path}.client_certificate_optional"),
                "only used with client_ca_file or client_ca_pem",
            );
        }
        None
    };
    let hsts = tls.hsts.as_ref().map(|hsts| hsts_value(errors, &path, hsts));
    let plan = key.map(|key| HostTlsPlan { key, client_auth });
    (plan, hsts)
}

fn client_auth(errors: &mut Errors, path: &str, tls: &proto::HostTls) -> Option<ClientAuth> {
    let (field, pem) = if tls.client_ca_file.is_empty() {
        ("client_ca_pem", tls.client_ca_pem.as_bytes().to_vec())
    } else {
        match std::fs::read(&tls.client_ca_file) {
            Ok(bytes) => ("client_ca_file", bytes),
            Err(error) => {
                errors.add(
                    format!("{path}.client_ca_file"),
                    format!("cannot read {}: {error}", tls.client_ca_file),
                );
                return None;
            }
        }
    };
    let certificates = match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => certificates,
        Ok(_) => {
            errors.add(format!("{path}.{field}"), "no certificate found in the CA bundle");
            return None;
        }
        Err(error) => {
            errors.add(format!("{path}.{field}"), format!("invalid PEM CA bundle: {error}"));
            return None;
        }
    };
    let mut fingerprint = xxhash_rust::xxh3::Xxh3::new();
    fingerprint.update(&[u8::from(tls.client_certificate_optional)]);
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        fingerprint.update(&certificate);
        if let Err(error) = roots.add(certificate) {
            errors.add(
                format!("{path}.{field}"),
                format!("CA certificate {index} of the bundle is not usable: {error}"),
            );
            return None;
        }
    }
    Some(ClientAuth {
        roots: Arc::new(roots),
        optional: tls.client_certificate_optional,
        fingerprint: fingerprint.digest(),
    })
}

/// The `Strict-Transport-Security` value. A zero max-age is allowed: it is
/// how a site withdraws HSTS.
fn hsts_value(errors: &mut Errors, path: &str, hsts: &proto::Hsts) -> Arc<str> {
    let max_age = duration(
        errors,
        || format!("{path}.hsts.max_age"),
        &hsts.max_age,
        defaults::HSTS_MAX_AGE,
        true,
    );
    let mut value = format!("max-age={}", max_age.as_secs());
    if hsts.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if hsts.preload {
        value.push_str("; preload");
    }
    value.into()
}
