//! TLS termination: certificates loaded on the control thread (`certs`), the
//! SNI table choosing a certificate per server name (`sni`), the rustls server
//! configs of each TLS listener (`ListenerTls`, compiled per snapshot), and the
//! handshake and record layer over a worker's socket (`stream`).
//!
//! Session resumption state (ticket keys, the TLS 1.2 session-id cache) lives
//! in a process-wide registry keyed by listener name, so every worker shares
//! it and a config reload keeps it: clients resume across reloads.

mod certs;
mod sni;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::crypto::GetRandomFailed;
use rustls::server::{NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub use certs::{CertificateError, LoadedCertificate};
pub use sni::{ClientAuth, SniHost, SniTable};
pub use stream::{accept, HandshakeError, TlsStream};

use crate::config::{ListenerTlsSettings, TlsVersion, UnknownSniPolicy};
use crate::metrics::TlsStats;
use sni::{FixedResolver, SniResolver};

/// ALPN protocols offered, in preference order. `h2` joins once HTTP/2 exists.
const ALPN: [&[u8]; 1] = [b"http/1.1"];

/// The TLS of one listener in one snapshot: which server config (and so
/// which certificate and client verification) a ClientHello gets.
pub struct ListenerTls {
    table: Arc<SniTable>,
    /// Whether names no host claims (and ClientHellos without SNI) get the
    /// default certificate; otherwise they are rejected.
    serves_default: bool,
    /// Every host without client verification, and the default certificate.
    shared: Arc<ServerConfig>,
    /// Host name → the host's own config, for hosts with a client CA.
    mtls: HashMap<Arc<str>, Arc<ServerConfig>>,
    handshake_timeout: Duration,
    pub stats: Arc<TlsStats>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("hosts", &self.table.len())
            .field("mtls_hosts", &self.mtls.len())
            .field("serves_default", &self.serves_default)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Compiles a listener's TLS: one shared server config whose resolver
    /// reads `table`, plus one config per host with a client CA. Costs do
    /// not grow with the number of hosts without mTLS (the table keeps those
    /// with mTLS apart). The error is rustls'
    /// refusal of the settings.
    pub fn build(
        listener: &str,
        settings: &ListenerTlsSettings,
        table: Arc<SniTable>,
        default: Option<Arc<CertifiedKey>>,
    ) -> Result<ListenerTls, String> {
        let serves_default = settings.unknown_sni == UnknownSniPolicy::DefaultCertificate && default.is_some();
        let resolver = Arc::new(SniResolver {
            table: Arc::clone(&table),
            default: if serves_default { default } else { None },
        });
        let shared = server_config(
            settings.min_version,
            resolver,
            None,
            sessions(listener, None, settings)?,
        )?;
        let mut mtls = HashMap::new();
        let mut kept = Vec::new();
        for host in table.mtls_hosts() {
            let Some(client_auth) = &host.client_auth else {
                continue;
            };
            // Its own resumption state: a session from before the host
            // required client certificates (or under another CA bundle)
            // must not resume past the verifier.
            let scope = format!("{}\u{0}{:016x}", host.host, client_auth.fingerprint);
            let resolver = Arc::new(FixedResolver(Arc::clone(&host.key)));
            let config = server_config(
                settings.min_version,
                resolver,
                Some(client_auth),
                sessions(listener, Some(&scope), settings)?,
            )?;
            mtls.insert(Arc::clone(&host.host), config);
            kept.push(scope);
        }
        forget_scopes(listener, &kept);
        Ok(ListenerTls {
            table,
            serves_default,
            shared,
            mtls,
            handshake_timeout: settings.handshake_timeout,
            stats: crate::metrics::tls_stats(listener),
        })
    }

    /// The server config for a ClientHello's SNI: the exact name's host, else
    /// the wildcard's, else the default certificate when the listener serves
    /// one for unknown names and missing SNI. None: reject the handshake.
    pub fn server_config(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        match sni.and_then(|name| self.table.lookup(name)) {
            Some(host) => Some(Arc::clone(self.mtls.get(&host.host).unwrap_or(&self.shared))),
            None => self.serves_default.then(|| Arc::clone(&self.shared)),
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

fn server_config(
    min_version: TlsVersion,
    resolver: Arc<dyn ResolvesServerCert>,
    client_auth: Option<&ClientAuth>,
    sessions: Sessions,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(certs::provider()))
        .with_protocol_versions(versions)
        .map_err(|error| format!("TLS versions: {error}"))?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(&auth.roots), Arc::clone(certs::provider()));
            let verifier = if auth.optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|error| format!("client certificate verifier: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    // Clients order suites by what their hardware does fast.
    config.ignore_client_order = false;
    config.ticketer = sessions.ticketer;
    config.session_storage = sessions.cache;
    Ok(Arc::new(config))
}

/// Resumption state shared by every worker and kept across reloads.
#[derive(Clone)]
struct Sessions {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

struct RegisteredSessions {
    sessions: Sessions,
    ticket_lifetime: Duration,
    cache_size: usize,
}

/// Listener name → (scope → sessions). The scope is "" for the listener's
/// shared config and the host plus its client-auth fingerprint for an mTLS
/// host's own config.
type Registry = HashMap<String, HashMap<String, RegisteredSessions>>;

static SESSIONS: Mutex<Option<Registry>> = Mutex::new(None);

/// The listener's (or one mTLS host's) resumption state, created on first
/// use; a changed ticket lifetime or cache size replaces just that part.
fn sessions(listener: &str, scope: Option<&str>, settings: &ListenerTlsSettings) -> Result<Sessions, String> {
    let mut registry = SESSIONS.lock().unwrap_or_else(PoisonError::into_inner);
    let scopes = registry
        .get_or_insert_with(HashMap::new)
        .entry(listener.to_owned())
        .or_default();
    let scope = scope.unwrap_or_default();
    let ticketer = match scopes.get(scope) {
        Some(old) if old.ticket_lifetime == settings.ticket_lifetime => Arc::clone(&old.sessions.ticketer),
        _ => ticketer(settings.ticket_lifetime).map_err(|error| format!("session tickets: {error}"))?,
    };
    let cache = match scopes.get(scope) {
        Some(old) if old.cache_size == settings.session_cache_size => Arc::clone(&old.sessions.cache),
        _ if settings.session_cache_size == 0 => Arc::new(NoServerSessionStorage {}),
        _ => ServerSessionMemoryCache::new(settings.session_cache_size),
    };
    let sessions = Sessions { ticketer, cache };
    scopes.insert(
        scope.to_owned(),
        RegisteredSessions {
            sessions: sessions.clone(),
            ticket_lifetime: settings.ticket_lifetime,
            cache_size: settings.session_cache_size,
        },
    );
    Ok(sessions)
}

/// Drops the mTLS scopes of `listener` that its latest build did not use, so
/// hosts that changed or left do not hold keys forever.
fn forget_scopes(listener: &str, kept: &[String]) {
    let mut registry = SESSIONS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(scopes) = registry.as_mut().and_then(|registry| registry.get_mut(listener)) {
        scopes.retain(|scope, _| scope.is_empty() || kept.contains(scope));
    }
}

/// Ticket keys rotating every `lifetime / 2`: a key encrypts for half the
/// lifetime and decrypts for the other half, so a ticket is accepted for at
/// most `lifetime`, which is also the hint sent to clients. rustls offers no
/// lifetime setting on the aws-lc-rs `Ticketer`, so a `TicketRotator` on our
/// schedule creates a fresh one per rotation. That ticketer also rolls its
/// own key every 6h and keeps one previous key (12h in all); validation caps
/// the lifetime at 12h so that inner schedule never cuts ours short.
fn ticketer(lifetime: Duration) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    let rotate_every = u32::try_from((lifetime / 2).as_secs()).unwrap_or(u32::MAX).max(1);
    Ok(Arc::new(rustls::TicketRotator::new(rotate_every, provider_ticketer)?))
}

fn provider_ticketer() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    let inner = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|_| GetRandomFailed)?;
    Ok(Box::new(ProviderTicketer(inner)))
}

/// Adapts the provider's `Arc` ticketer to the rotator's boxed generator.
#[derive(Debug)]
struct ProviderTicketer(Arc<dyn ProducesTickets>);

impl ProducesTickets for ProviderTicketer {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}
