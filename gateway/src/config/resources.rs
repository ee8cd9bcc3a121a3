//! The snapshot's per-resource collections. Each is persistent (imbl), so the
//! snapshot after a change shares every untouched entry with the one before
//! and copying it costs what changed, not the size of the config: the source
//! messages by name with their content hashes (`SourceConfig`), the live
//! clusters (`Clusters`), and the reverse references (`References`) that say
//! which hosts depend on a cluster, a certificate or the status page, so a
//! change finds its dependents without walking all hosts.

use std::sync::Arc;

use super::proto;
use super::validate::{host_name, uses_status_page};
use crate::upstream::Cluster;

/// A resource's content hash: xxh3 of its protobuf encoding, computed once
/// when the message enters a snapshot.
pub(crate) fn content_hash(message: &impl prost::Message) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&message.encode_to_vec())
}

/// One resource message with its content hash.
#[derive(Debug)]
pub struct Source<T> {
    pub hash: u64,
    pub message: Arc<T>,
}

impl<T> Clone for Source<T> {
    fn clone(&self) -> Self {
        Source {
            hash: self.hash,
            message: Arc::clone(&self.message),
        }
    }
}

/// Resource messages of one kind by name, in name order.
pub struct Sources<T>(imbl::OrdMap<Arc<str>, Source<T>>);

impl<T> Clone for Sources<T> {
    fn clone(&self) -> Self {
        Sources(self.0.clone())
    }
}

impl<T> Default for Sources<T> {
    fn default() -> Self {
        Sources(imbl::OrdMap::new())
    }
}

impl<T> Sources<T> {
    /// Every message, by name (the order of `Router::hosts` for hosts).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.0.values().map(|source| &*source.message)
    }

    pub fn get(&self, name: &str) -> Option<&Source<T>> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl ExactSizeIterator<Item = &Arc<str>> {
        self.0.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn hash(&self, name: &str) -> Option<u64> {
        self.0.get(name).map(|source| source.hash)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn insert(&mut self, name: Arc<str>, hash: u64, message: Arc<T>) {
        self.0.insert(name, Source { hash, message });
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<Source<T>> {
        self.0.remove(name)
    }
}

impl<T: prost::Message> Sources<T> {
    /// Hashes each message; `name` gives its key.
    fn hashed(messages: Vec<T>, name: impl Fn(usize, &T) -> String) -> Sources<T> {
        Sources(
            messages
                .into_iter()
                .enumerate()
                .map(|(index, message)| {
                    let key: Arc<str> = name(index, &message).into();
                    let source = Source {
                        hash: content_hash(&message),
                        message: Arc::new(message),
                    };
                    (key, source)
                })
                .collect(),
        )
    }
}

/// The config a snapshot runs, as resources by name: what the admin API
/// reads and what the next change set is compared with.
#[derive(Clone, Default)]
pub struct SourceConfig {
    pub runtime: Option<proto::Runtime>,
    pub admin: Option<proto::Admin>,
    pub access_log: Option<proto::AccessLog>,
    pub http: Option<proto::HttpOptions>,
    pub ebpf: Option<proto::Ebpf>,
    /// In config order (few; the status page lists them in this order).
    pub listeners: Vec<proto::Listener>,
    /// By host name: its own, else its first domain.
    pub hosts: Sources<proto::VirtualHost>,
    pub clusters: Sources<proto::Cluster>,
    pub certificates: Sources<proto::Certificate>,
    /// The budget and the plugins in config order (few; their order breaks
    /// ties of `order`). Default when the config has none.
    pub plugins: proto::Plugins,
}

impl SourceConfig {
    /// Takes a validated config apart (names are unique).
    pub(super) fn new(config: proto::Config) -> SourceConfig {
        SourceConfig {
            runtime: config.runtime,
            admin: config.admin,
            access_log: config.access_log,
            http: config.http,
            ebpf: config.ebpf,
            listeners: config.listeners,
            hosts: Sources::hashed(config.hosts, host_name),
            clusters: Sources::hashed(config.clusters, |_, cluster| cluster.name.clone()),
            certificates: Sources::hashed(config.certificates, |_, certificate| certificate.name.clone()),
            plugins: config.plugins.unwrap_or_default(),
        }
    }

    /// The whole config as one message (resources by name). Costs the size
    /// of the config.
    pub fn to_proto(&self) -> proto::Config {
        proto::Config {
            runtime: self.runtime.clone(),
            admin: self.admin.clone(),
            access_log: self.access_log.clone(),
            http: self.http.clone(),
            ebpf: self.ebpf.clone(),
            listeners: self.listeners.clone(),
            hosts: self.hosts.iter().cloned().collect(),
            clusters: self.clusters.iter().cloned().collect(),
            certificates: self.certificates.iter().cloned().collect(),
            plugins: (self.plugins != proto::Plugins::default()).then(|| self.plugins.clone()),
        }
    }
}

/// The live clusters by name, in a persistent map so a change copies only
/// what it touches. Read like a `HashMap` (`get`, `len`, `iter`, `&clusters`
/// in a `for`, `clusters["name"]`).
#[derive(Default)]
pub struct Clusters {
    map: imbl::HashMap<String, Arc<Cluster>>,
}

impl Clusters {
    pub(super) fn new(map: imbl::HashMap<String, Arc<Cluster>>) -> Clusters {
        Clusters { map }
    }

    /// The persistent map itself: cloning it is O(1).
    pub fn map(&self) -> &imbl::HashMap<String, Arc<Cluster>> {
        &self.map
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.map.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> imbl::hashmap::Iter<'_, String, Arc<Cluster>, imbl::shared_ptr::DefaultSharedPtr> {
        self.map.iter()
    }
}

impl std::ops::Index<&str> for Clusters {
    type Output = Arc<Cluster>;

    fn index(&self, name: &str) -> &Arc<Cluster> {
        self.map
            .get(name)
            .unwrap_or_else(|| panic!("no cluster named {name:?}"))
    }
}

impl<'a> IntoIterator for &'a Clusters {
    type Item = (&'a String, &'a Arc<Cluster>);
    type IntoIter = imbl::hashmap::Iter<'a, String, Arc<Cluster>, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

type Users = imbl::OrdSet<Arc<str>>;

/// Which hosts name each cluster and certificate, and which render the
/// status page; kept up to date per changed host.
#[derive(Clone, Default)]
pub(super) struct References {
    clusters: imbl::HashMap<Arc<str>, Users>,
    certificates: imbl::HashMap<Arc<str>, Users>,
    status_page: Users,
}

impl References {
    pub fn new(hosts: &Sources<proto::VirtualHost>) -> References {
        let mut references = References::default();
        for (name, source) in &hosts.0 {
            references.add(name, &source.message);
        }
        references
    }

    pub fn add(&mut self, host: &Arc<str>, source: &proto::VirtualHost) {
        for cluster in clusters_of(source) {
            self.clusters
                .entry(cluster.into())
                .or_default()
                .insert(Arc::clone(host));
        }
        if let Some(certificate) = certificate_of(source) {
            self.certificates
                .entry(certificate.into())
                .or_default()
                .insert(Arc::clone(host));
        }
        if uses_status_page(source) {
            self.status_page.insert(Arc::clone(host));
        }
    }

    /// `host` changed from `old` to `new`: only references that differ move.
    pub fn replace(&mut self, host: &Arc<str>, old: &proto::VirtualHost, new: &proto::VirtualHost) {
        let same = clusters_of(old).eq(clusters_of(new))
            && certificate_of(old) == certificate_of(new)
            && uses_status_page(old) == uses_status_page(new);
        if !same {
            self.remove(host, old);
            self.add(host, new);
        }
    }

    pub fn remove(&mut self, host: &str, source: &proto::VirtualHost) {
        for cluster in clusters_of(source) {
            remove_user(&mut self.clusters, cluster, host);
        }
        if let Some(certificate) = certificate_of(source) {
            remove_user(&mut self.certificates, certificate, host);
        }
        self.status_page.remove(host);
    }

    pub fn cluster_users(&self, cluster: &str) -> impl Iterator<Item = &Arc<str>> {
        self.clusters.get(cluster).into_iter().flatten()
    }

    pub fn certificate_users(&self, certificate: &str) -> impl Iterator<Item = &Arc<str>> {
        self.certificates.get(certificate).into_iter().flatten()
    }

    pub fn status_page_users(&self) -> impl Iterator<Item = &Arc<str>> {
        self.status_page.iter()
    }

    /// Whether any host names a certificate (so SNI can select one).
    pub fn hosts_have_certificates(&self) -> bool {
        !self.certificates.is_empty()
    }
}

fn remove_user(map: &mut imbl::HashMap<Arc<str>, Users>, resource: &str, host: &str) {
    if let Some(users) = map.get_mut(resource) {
        users.remove(host);
        if users.is_empty() {
            map.remove(resource);
        }
    }
}

fn clusters_of(host: &proto::VirtualHost) -> impl Iterator<Item = &str> {
    host.routes
        .iter()
        .filter_map(|route| route.proxy.as_ref())
        .map(|proxy| proxy.cluster.as_str())
        .filter(|cluster| !cluster.is_empty())
}

fn certificate_of(host: &proto::VirtualHost) -> Option<&str> {
    host.tls
        .as_ref()
        .map(|tls| tls.certificate.as_str())
        .filter(|certificate| !certificate.is_empty())
}
