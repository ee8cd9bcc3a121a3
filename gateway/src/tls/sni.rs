//! SNI → certificate: the host names of every virtual host that has a
//! certificate, in two hash maps (exact names; wildcard suffixes), and the
//! rustls certificate resolvers that read them. Built once per snapshot and
//! shared by all of its TLS listeners.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::route::Domain;

/// Client-certificate verification of one host (mTLS).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub roots: Arc<RootCertStore>,
    /// Accept clients that present no certificate.
    pub optional: bool,
    /// Content hash of the host's TLS settings: a changed CA bundle must not
    /// let sessions resumed from the old one in.
    pub fingerprint: u64,
}

/// One virtual host's certificate.
#[derive(Debug)]
pub struct SniHost {
    pub host: Arc<str>,
    pub key: Arc<CertifiedKey>,
    pub client_auth: Option<ClientAuth>,
}

/// Server names → hosts with certificates.
#[derive(Debug, Default)]
pub struct SniTable {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the suffix after "*." ("example.com" for "*.example.com").
    wildcard: HashMap<Box<str>, usize>,
    hosts: Vec<SniHost>,
}

impl SniTable {
    /// Indexes each host's domains. The default domain "*" names no server
    /// and is skipped. Validation keeps domains unique across hosts; should
    /// one repeat anyway, the first host keeps it (as in the router).
    pub fn new<'a>(hosts: impl IntoIterator<Item = (SniHost, &'a [Domain])>) -> SniTable {
        let mut table = SniTable::default();
        for (host, domains) in hosts {
            let index = table.hosts.len();
            for domain in domains {
                match domain {
                    Domain::Exact(name) => {
                        table.exact.entry(name.clone()).or_insert(index);
                    }
                    Domain::Wildcard(suffix) => {
                        table.wildcard.entry(suffix.clone()).or_insert(index);
                    }
                    Domain::Any => {}
                }
            }
            table.hosts.push(host);
        }
        table
    }

    pub fn hosts(&self) -> &[SniHost] {
        &self.hosts
    }

    /// The host serving `server_name` (any case, trailing dot ignored): the
    /// exact name, else the wildcard of its parent domain. Like certificate
    /// wildcards, "*.example.com" covers one label: "a.example.com", not
    /// "a.b.example.com" (which only "*.b.example.com" covers, being the
    /// longest possible wildcard for it).
    pub fn lookup(&self, server_name: &str) -> Option<usize> {
        let name = normalize(server_name);
        self.exact
            .get(name.as_ref())
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .copied()
    }
}

/// Lower case without a trailing dot, allocating only for upper-case input.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The certificate for a ClientHello on a listener's shared server config:
/// the SNI's host, else the listener's default (when its policy serves one).
#[derive(Debug)]
pub struct SniResolver {
    pub table: Arc<SniTable>,
    pub default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        client_hello
            .server_name()
            .and_then(|name| self.table.lookup(name))
            .map(|index| Arc::clone(&self.table.hosts[index].key))
            .or_else(|| self.default.clone())
    }
}

/// The one certificate of an mTLS host's own server config.
#[derive(Debug)]
pub struct FixedResolver(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
