//! TLS for the end-to-end tests: certificates made at run time with rcgen
//! (`Ca`, `Leaf`: a root or intermediate CA, server leaves for DNS names with
//! ECDSA P-256 or RSA keys, expired leaves, client certificates) and a rustls
//! client (`TlsClient`) that connects with or without SNI, with chosen
//! versions, an optional client certificate and an optional shared session
//! store, and reports what was negotiated (`Handshake`). A `TlsConn` carries
//! HTTP/1.1 requests over the TLS stream with the same `Conn` as plain tests.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

pub use rustls::{HandshakeKind, ProtocolVersion};

use crate::client::{self, Conn, Response, Transport};

/// The key type of a generated certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    #[default]
    EcdsaP256,
    Rsa2048,
}

/// How `Ca::issue` makes a leaf.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeafSpec {
    pub key: KeyKind,
    /// Valid only during 2020: expired now.
    pub expired: bool,
    /// A client certificate (extended key usage clientAuth) rather than a server one.
    pub client: bool,
}

/// A certificate authority: a self-signed root, or an intermediate whose
/// chain (itself up to, not including, the root) is appended to its leaves.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the intermediates between this CA and the root, nearest first.
    chain_above: String,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf alone.
    pub cert_pem: String,
    /// The leaf followed by the intermediates of its CA (what a server sends).
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
    /// The leaf's DER: compare with `Handshake::peer_der` to tell which certificate a server sent.
    pub der: Vec<u8>,
}

fn key_pair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
    }
    .expect("generate key pair")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// A self-signed root CA whose common name is `name`.
    pub fn new(name: &str) -> Ca {
        let issuer = CertifiedIssuer::self_signed(ca_params(name), key_pair(KeyKind::EcdsaP256)).expect("self-sign CA");
        Ca {
            issuer,
            chain_above: String::new(),
        }
    }

    /// An intermediate CA signed by this one: its leaves carry a two-certificate chain.
    pub fn intermediate(&self, name: &str) -> Ca {
        let issuer = CertifiedIssuer::signed_by(ca_params(name), key_pair(KeyKind::EcdsaP256), &self.issuer)
            .expect("sign intermediate CA");
        let chain_above = format!("{}{}", issuer.pem(), self.chain_above);
        Ca { issuer, chain_above }
    }

    /// This CA's own certificate (the trust anchor when it is a root).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// An ECDSA P-256 server certificate for `names` (the first is also the common name).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, LeafSpec::default())
    }

    /// A client certificate whose common name is `name`.
    pub fn client_cert(&self, name: &str) -> Leaf {
        self.issue(
            &[name],
            LeafSpec {
                client: true,
                ..LeafSpec::default()
            },
        )
    }

    pub fn issue(&self, names: &[&str], spec: LeafSpec) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("SAN names");
        params.distinguished_name.remove(DnType::CommonName);
        params
            .distinguished_name
            .push(DnType::CommonName, *names.first().expect("at least one name"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        }
        let key = key_pair(spec.key);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_pem = cert.pem();
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.chain_above),
            cert_pem,
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `<name>.crt` (the chain) and `<name>.key` into `dir`, for the `*_file` config fields.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&cert, &self.chain_pem).expect("write certificate");
        fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// A `certificates:` entry with the PEM inline, as a YAML flow mapping.
    pub fn yaml_entry(&self, name: &str) -> String {
        format!(
            "{{name: {name}, cert_chain_pem: {}, private_key_pem: {}}}",
            yaml_str(&self.chain_pem),
            yaml_str(&self.key_pem)
        )
    }
}

/// `text` as a YAML double-quoted scalar (JSON strings are valid YAML).
pub fn yaml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Protocol versions a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// A shared client session store: connections made with the same store
/// resume each other's sessions (TLS 1.3 tickets, TLS 1.2 ids or tickets).
#[derive(Clone)]
pub struct SessionStore(Arc<ClientSessionMemoryCache>);

impl SessionStore {
    pub fn new() -> SessionStore {
        SessionStore(Arc::new(ClientSessionMemoryCache::new(64)))
    }
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore::new()
    }
}

/// Accepts any server certificate, so a test can see what was served even
/// when it does not match the name asked for (default and expired certificates).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How to connect: which CA to trust (or none: accept anything), versions,
/// SNI, client certificate, ALPN and session store.
///
/// rustls resumes a stored session only with the very verifier and client
/// credentials that made it, so the config is built once, on first use, and
/// shared by clones: resume with the same `TlsClient` (or a clone of it).
#[derive(Clone)]
pub struct TlsClient {
    roots: Option<String>,
    versions: Versions,
    send_sni: bool,
    identity: Option<Leaf>,
    sessions: Option<SessionStore>,
    alpn: Vec<Vec<u8>>,
    built: OnceLock<Arc<ClientConfig>>,
}

/// What a completed handshake negotiated.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub version: ProtocolVersion,
    pub alpn: Option<String>,
    pub kind: HandshakeKind,
    /// DNS names of the server's leaf certificate (subject alternative names).
    pub peer_names: Vec<String>,
    /// The leaf's common name.
    pub peer_common_name: Option<String>,
    /// The leaf's DER (compare with `Leaf::der`).
    pub peer_der: Vec<u8>,
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Transport for TlsStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// An established TLS connection carrying HTTP/1.1.
pub struct TlsConn {
    pub handshake: Handshake,
    pub conn: Conn<TlsStream>,
}

impl TlsConn {
    /// Sends a request and reads its response.
    pub fn exchange(&mut self, bytes: &[u8]) -> io::Result<Response> {
        self.conn.exchange(bytes)
    }

    /// GET `path` with Host `host`, keeping the connection open.
    pub fn get(&mut self, host: &str, path: &str) -> io::Result<Response> {
        self.exchange(&client::request("GET", host, path, &[], None))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsClient {
    /// Trusts `ca_pem` (one or more PEM certificates); offers TLS 1.2 and 1.3,
    /// ALPN `http/1.1`, SNI, no client certificate, no resumption.
    pub fn trusting(ca_pem: &str) -> TlsClient {
        TlsClient {
            roots: Some(ca_pem.to_string()),
            ..TlsClient::insecure()
        }
    }

    /// Accepts any server certificate (still checks the handshake signatures).
    pub fn insecure() -> TlsClient {
        TlsClient {
            roots: None,
            versions: Versions::Both,
            send_sni: true,
            identity: None,
            sessions: None,
            alpn: vec![b"http/1.1".to_vec()],
            built: OnceLock::new(),
        }
    }

    pub fn versions(mut self, v: Versions) -> TlsClient {
        self.versions = v;
        self.built = OnceLock::new();
        self
    }

    /// Send no server_name extension; the certificate is still checked against the name given to `connect`.
    pub fn without_sni(mut self) -> TlsClient {
        self.send_sni = false;
        self.built = OnceLock::new();
        self
    }

    /// Present `leaf` (chain and key) when the server asks for a client certificate.
    pub fn client_cert(mut self, leaf: &Leaf) -> TlsClient {
        self.identity = Some(leaf.clone());
        self.built = OnceLock::new();
        self
    }

    /// Store sessions in `store` and offer them on later connections.
    pub fn sessions(mut self, store: &SessionStore) -> TlsClient {
        self.sessions = Some(store.clone());
        self.built = OnceLock::new();
        self
    }

    /// ALPN protocols to offer (empty: no ALPN extension).
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self.built = OnceLock::new();
        self
    }

    /// Panics on a bad setting: that is a mistake in the test, not a result.
    fn config(&self) -> ClientConfig {
        let provider = provider();
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Tls12 => &[&rustls::version::TLS12],
            Versions::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("protocol versions");
        let builder = match &self.roots {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(cert.expect("CA PEM")).expect("CA certificate");
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        };
        let mut config = match &self.identity {
            Some(leaf) => {
                let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client chain PEM");
                let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key PEM");
                builder.with_client_auth_cert(chain, key).expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = self.send_sni;
        config.alpn_protocols = self.alpn.clone();
        config.resumption = match &self.sessions {
            Some(store) => Resumption::store(store.0.clone()),
            None => Resumption::disabled(),
        };
        config
    }

    /// Connects to `addr` and completes the handshake for `server_name` (the
    /// SNI sent, and the name the certificate must carry when verifying).
    /// A refused handshake is an error whose text carries the TLS alert.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> io::Result<TlsConn> {
        let config = self.built.get_or_init(|| Arc::new(self.config())).clone();
        let name = ServerName::try_from(server_name.to_string()).map_err(invalid)?;
        let mut tls = ClientConnection::new(config, name).map_err(invalid)?;
        let mut sock = client::connect(addr)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut sock)?;
        }
        let handshake = handshake_of(&tls)?;
        Ok(TlsConn {
            handshake,
            conn: Conn::from_stream(StreamOwned::new(tls, sock)),
        })
    }

    /// One `GET path` (Host `server_name`, `Connection: close`) on a new
    /// connection: what the handshake negotiated and the response.
    pub fn get(&self, addr: SocketAddr, server_name: &str, path: &str) -> io::Result<(Handshake, Response)> {
        let mut c = self.connect(addr, server_name)?;
        let r = c.exchange(&client::request(
            "GET",
            server_name,
            path,
            &[("Connection", "close")],
            None,
        ))?;
        Ok((c.handshake, r))
    }
}

fn handshake_of(tls: &ClientConnection) -> io::Result<Handshake> {
    let version = tls.protocol_version().ok_or_else(|| invalid("no protocol version"))?;
    let kind = tls.handshake_kind().ok_or_else(|| invalid("no handshake kind"))?;
    let alpn = tls.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let leaf = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| invalid("the server sent no certificate"))?;
    let (peer_names, peer_common_name) = names_of(leaf.as_ref())?;
    Ok(Handshake {
        version,
        alpn,
        kind,
        peer_names,
        peer_common_name,
        peer_der: leaf.to_vec(),
    })
}

/// (SAN DNS names, common name) of a DER certificate.
fn names_of(der: &[u8]) -> io::Result<(Vec<String>, Option<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(invalid)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok((names, cn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
    use rustls::{ServerConfig, ServerConnection};

    /// A one-thread rustls HTTP server answering every request on a
    /// connection with `200 ok`; for checking the client helper alone.
    fn serve(config: ServerConfig, connections: usize) -> SocketAddr {
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let Ok(mut sock) = stream else { continue };
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut tls = ServerConnection::new(config.clone()).unwrap();
                let mut s = rustls::Stream::new(&mut tls, &mut sock);
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                }
            }
        });
        addr
    }

    fn server_config(leaf: &Leaf, versions: &[&'static rustls::SupportedProtocolVersion]) -> ServerConfig {
        let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    #[test]
    fn verifies_a_chain_and_reports_the_handshake() {
        let root = Ca::new("root");
        let inter = root.intermediate("intermediate");
        let leaf = inter.leaf(&["a.test", "*.b.test"]);
        assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let addr = serve(server_config(&leaf, &[&rustls::version::TLS13]), 1);
        let (h, r) = TlsClient::trusting(&root.pem()).get(addr, "x.b.test", "/").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(h.version, ProtocolVersion::TLSv1_3);
        assert_eq!(h.alpn.as_deref(), Some("http/1.1"));
        assert_eq!(h.kind, HandshakeKind::Full);
        assert_eq!(h.peer_names, ["a.test", "*.b.test"]);
        assert_eq!(h.peer_common_name.as_deref(), Some("a.test"));
        assert_eq!(h.peer_der, leaf.der);
    }

    #[test]
    fn refuses_a_wrong_name_or_another_ca_unless_insecure() {
        let root = Ca::new("root");
        let leaf = Ca::new("other").issue(
            &["a.test"],
            LeafSpec {
                key: KeyKind::Rsa2048,
                expired: true,
                ..LeafSpec::default()
            },
        );
        let addr = serve(server_config(&leaf, &[&rustls::version::TLS12]), 2);
        assert!(TlsClient::trusting(&root.pem()).connect(addr, "a.test").is_err());
        let (h, r) = TlsClient::insecure().get(addr, "nope.test", "/").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(h.version, ProtocolVersion::TLSv1_2);
        assert_eq!(h.peer_der, leaf.der);
    }

    #[test]
    fn a_shared_store_resumes_on_both_versions() {
        let ca = Ca::new("root");
        let leaf = ca.leaf(&["a.test"]);
        for (v, versions) in [
            (Versions::Tls13, &rustls::version::TLS13),
            (Versions::Tls12, &rustls::version::TLS12),
        ] {
            let mut config = server_config(&leaf, &[versions]);
            config.session_storage = ServerSessionMemoryCache::new(16);
            let addr = serve(config, 3);
            let store = SessionStore::new();
            let client = TlsClient::trusting(&ca.pem()).versions(v).sessions(&store);
            let kinds: Vec<HandshakeKind> = (0..2)
                .map(|_| client.get(addr, "a.test", "/").unwrap().0.kind)
                .collect();
            assert_eq!(kinds, [HandshakeKind::Full, HandshakeKind::Resumed], "{v:?}");
            // Without the store nothing resumes.
            let fresh = TlsClient::trusting(&ca.pem()).versions(v);
            assert_eq!(fresh.get(addr, "a.test", "/").unwrap().0.kind, HandshakeKind::Full);
        }
    }

    #[test]
    fn presents_a_client_certificate() {
        let ca = Ca::new("root");
        let clients = Ca::new("clients");
        let leaf = ca.leaf(&["a.test"]);
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(clients.pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let addr = serve(config, 2);
        let with = TlsClient::trusting(&ca.pem()).client_cert(&clients.client_cert("me"));
        assert_eq!(with.get(addr, "a.test", "/").unwrap().1.status, 200);
        // TLS 1.3: the server rejects after the client's Finished, so the request fails instead.
        assert!(TlsClient::trusting(&ca.pem()).get(addr, "a.test", "/").is_err());
    }

    #[test]
    fn writes_files_and_yaml() {
        let leaf = Ca::new("root").leaf(&["a.test"]);
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = leaf.write(dir.path(), "a");
        assert_eq!(fs::read_to_string(c).unwrap(), leaf.chain_pem);
        assert!(fs::read_to_string(k).unwrap().contains("BEGIN PRIVATE KEY"));
        let y: serde_yaml::Value = serde_yaml::from_str(&leaf.yaml_entry("a")).unwrap();
        assert_eq!(y["cert_chain_pem"].as_str(), Some(leaf.chain_pem.as_str()));
        assert_eq!(y["private_key_pem"].as_str(), Some(leaf.key_pem.as_str()));
    }
}
