//! SNI → certificate: the host names of every virtual host that has a
//! certificate, in two hash maps (exact names; wildcard suffixes), and the
//! rustls certificate resolvers that read them. One table per snapshot,
//! shared by all of its TLS listeners; its maps are persistent (imbl), so the
//! next snapshot's table is a copy with only the changed hosts redone.

use std::borrow::Cow;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::route::{claim_domain, Domain};

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

/// A host in the table and the domains it was indexed under.
type Indexed = (Arc<SniHost>, Arc<[Domain]>);

/// Server names → hosts with certificates.
#[derive(Debug, Default, Clone)]
pub struct SniTable {
    exact: imbl::HashMap<Box<str>, Arc<SniHost>>,
    /// Keyed by the suffix after "*." ("example.com" for "*.example.com").
    wildcard: imbl::HashMap<Box<str>, Arc<SniHost>>,
    /// Every host in the table by name, with the domains it holds.
    hosts: imbl::HashMap<Arc<str>, Indexed>,
    /// The hosts verifying client certificates: each needs its own server config.
    mtls: imbl::OrdMap<Arc<str>, Arc<SniHost>>,
}

impl SniTable {
    /// Indexes each host's domains. The default domain "*" names no server
    /// and is skipped. Validation keeps domains unique across hosts; should
    /// one repeat anyway, the first host keeps it (as in the router).
    pub fn new<'a>(hosts: impl IntoIterator<Item = (SniHost, &'a [Domain])>) -> SniTable {
        SniTable::default().with_changes([], hosts)
    }

    /// This table without the hosts named in `remove` and with `add`
    /// (replacing a host of the same name). Costs what it changes: a
    /// replaced host's unchanged names are overwritten in place.
    pub fn with_changes<'a, 'b>(
        &self,
        remove: impl IntoIterator<Item = &'a str>,
        add: impl IntoIterator<Item = (SniHost, &'b [Domain])>,
    ) -> SniTable {
        let mut table = self.clone();
        for name in remove {
            if let Some((old, domains)) = table.hosts.remove(name) {
                table.mtls.remove(name);
                table.release(&old, &domains, |_| true);
            }
        }
        // Every replaced host gives up its dropped names before any host
        // claims, so a name can move between hosts in one change.
        let add: Vec<_> = add
            .into_iter()
            .map(|(host, domains)| {
                let old = table.hosts.get(&host.host).cloned().map(|(old, old_domains)| {
                    table.release(&old, &old_domains, |domain| !domains.contains(domain));
                    old
                });
                (Arc::new(host), domains, old)
            })
            .collect();
        for (host, domains, old) in add {
            let claimable = |holder: &Arc<SniHost>| old.as_ref().is_some_and(|old| Arc::ptr_eq(holder, old));
            for domain in domains {
                claim_domain(&mut table.exact, &mut table.wildcard, domain, &host, claimable);
            }
            if host.client_auth.is_some() {
                table.mtls.insert(Arc::clone(&host.host), Arc::clone(&host));
            } else if old.is_some_and(|old| old.client_auth.is_some()) {
                table.mtls.remove(&host.host);
            }
            table.hosts.insert(Arc::clone(&host.host), (host, domains.into()));
        }
        table
    }

    /// Drops the names of `old` that `drop` selects, where `old` holds them.
    fn release(&mut self, old: &Arc<SniHost>, domains: &[Domain], drop: impl Fn(&Domain) -> bool) {
        let held = |map: &imbl::HashMap<Box<str>, Arc<SniHost>>, key: &str| {
            map.get(key).is_some_and(|host| Arc::ptr_eq(host, old))
        };
        for domain in domains.iter().filter(|domain| drop(domain)) {
            match domain {
                Domain::Exact(name) if held(&self.exact, name) => {
                    self.exact.remove(name);
                }
                Domain::Wildcard(suffix) if held(&self.wildcard, suffix) => {
                    self.wildcard.remove(suffix);
                }
                _ => {}
            }
        }
    }

    /// How many hosts have a certificate here.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The hosts with client verification, by name.
    pub fn mtls_hosts(&self) -> impl Iterator<Item = &Arc<SniHost>> {
        self.mtls.values()
    }

    /// The host serving `server_name` (any case, trailing dot ignored): the
    /// exact name, else the wildcard of its parent domain. Like certificate
    /// wildcards, "*.example.com" covers one label: "a.example.com", not
    /// "a.b.example.com" (which only "*.b.example.com" covers, being the
    /// longest possible wildcard for it).
    pub fn lookup(&self, server_name: &str) -> Option<&Arc<SniHost>> {
        let name = normalize(server_name);
        self.exact.get(name.as_ref()).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
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
            .map(|host| Arc::clone(&host.key))
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
