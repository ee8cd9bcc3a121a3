//! Tests of certificate loading, SNI selection, the per-listener server
//! configs (checked by real in-memory rustls handshakes) and the TLS parts
//! of config validation and snapshots. Certificates come from rcgen.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind, RootCertStore, ServerConnection};

use super::*;
use crate::config::{proto, ConfigErrors, Snapshot};
use crate::route::Domain;

// ---------------------------------------------------------------- fixtures

#[derive(Clone, Copy)]
enum Alg {
    EcdsaP256,
    Rsa2048,
}

fn key_pair(alg: Alg) -> KeyPair {
    match alg {
        Alg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap(),
    }
}

/// A test CA that signs leaves.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf signed by the test CA: chain (leaf, CA) and its PKCS#8 key.
struct Leaf {
    chain_pem: String,
    leaf_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            ca: CertifiedIssuer::self_signed(params, key_pair(Alg::EcdsaP256)).unwrap(),
        }
    }

    fn leaf(&self, names: &[&str], alg: Alg) -> Leaf {
        self.leaf_with(names, alg, |_| {})
    }

    fn leaf_with(&self, names: &[&str], alg: Alg, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = key_pair(alg);
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            leaf_der: cert.der().clone(),
            key,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    fn certificate(&self, name: &str) -> proto::Certificate {
        proto::Certificate {
            name: name.into(),
            cert_chain_pem: self.chain_pem.clone(),
            private_key_pem: self.key.serialize_pem(),
            ..Default::default()
        }
    }
}

/// The key inside a PKCS#8 document: PKCS#1 for RSA, SEC1 for EC keys.
fn pkcs8_inner_key(pkcs8: &[u8]) -> Vec<u8> {
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = if input[1] < 0x80 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            (
                input[2..2 + n].iter().fold(0, |len, b| len << 8 | usize::from(*b)),
                2 + n,
            )
        };
        (input[0], &input[header..header + len], &input[header + len..])
    }
    let (_, info, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(info);
    let (_, _algorithm, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    key.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
}

fn load(certificate: &proto::Certificate) -> Result<LoadedCertificate, CertificateError> {
    LoadedCertificate::load(certificate)
}

// ---------------------------------------------------------------- certificates

#[test]
fn loads_ecdsa_with_pkcs8_and_sec1_keys_and_keeps_the_chain() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.example.com", "*.b.example.com"], Alg::EcdsaP256);
    let pkcs8 = load(&leaf.certificate("ec")).unwrap();
    assert_eq!(pkcs8.name, "ec");
    assert_eq!(pkcs8.dns_names, ["a.example.com", "*.b.example.com"]);
    assert_eq!(pkcs8.key.cert.len(), 2, "leaf and CA");
    assert_eq!(pkcs8.key.cert[0], leaf.leaf_der);
    assert!(pkcs8.not_after > SystemTime::now());

    let mut sec1 = leaf.certificate("ec");
    sec1.private_key_pem = pem("EC PRIVATE KEY", &pkcs8_inner_key(&leaf.key.serialize_der()));
    let sec1 = load(&sec1).unwrap();
    assert_eq!(sec1.key.cert[0], leaf.leaf_der);
    assert_eq!(sec1.key.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
}

#[test]
fn loads_rsa_with_pkcs8_and_pkcs1_keys() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["rsa.example.com"], Alg::Rsa2048);
    let pkcs8 = load(&leaf.certificate("rsa")).unwrap();
    assert_eq!(pkcs8.key.key.algorithm(), rustls::SignatureAlgorithm::RSA);

    let mut pkcs1 = leaf.certificate("rsa");
    pkcs1.private_key_pem = pem("RSA PRIVATE KEY", &pkcs8_inner_key(&leaf.key.serialize_der()));
    assert!(pkcs1.private_key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert_eq!(load(&pkcs1).unwrap().dns_names, ["rsa.example.com"]);
}

#[test]
fn refuses_a_key_of_another_certificate() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.example.com"], Alg::EcdsaP256);
    let other = pki.leaf(&["a.example.com"], Alg::EcdsaP256);
    let mut certificate = leaf.certificate("a");
    certificate.private_key_pem = other.key.serialize_pem();
    let error = load(&certificate).unwrap_err();
    assert_eq!(error.field, "private_key_pem");
    assert_eq!(error.message, "key does not match the certificate");

    // An RSA key for an ECDSA certificate fails the same way.
    certificate.private_key_pem = pki.leaf(&["x"], Alg::Rsa2048).key.serialize_pem();
    assert_eq!(
        load(&certificate).unwrap_err().message,
        "key does not match the certificate"
    );
}

#[test]
fn reports_garbage_and_missing_parts() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.example.com"], Alg::EcdsaP256);

    let mut garbage_chain = leaf.certificate("a");
    garbage_chain.cert_chain_pem = "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n".into();
    let error = load(&garbage_chain).unwrap_err();
    assert_eq!(error.field, "cert_chain_pem");
    assert!(error.message.starts_with("invalid PEM certificate chain"), "{error:?}");

    let mut bad_der = leaf.certificate("a");
    bad_der.cert_chain_pem = pem("CERTIFICATE", b"definitely not DER");
    let error = load(&bad_der).unwrap_err();
    assert_eq!(error.field, "cert_chain_pem");
    assert!(
        error.message.starts_with("leaf certificate does not parse"),
        "{error:?}"
    );

    let mut empty_chain = leaf.certificate("a");
    empty_chain.cert_chain_pem = leaf.key.serialize_pem();
    let error = load(&empty_chain).unwrap_err();
    assert_eq!(error.field, "cert_chain_pem");
    assert!(error.message.starts_with("no certificate found"), "{error:?}");

    let mut no_key = leaf.certificate("a");
    no_key.private_key_pem = leaf.chain_pem.clone();
    let error = load(&no_key).unwrap_err();
    assert_eq!(error.field, "private_key_pem");
    assert!(error.message.starts_with("no private key found"), "{error:?}");

    let mut bad_key = leaf.certificate("a");
    bad_key.private_key_pem = pem("PRIVATE KEY", b"garbage key bytes");
    let error = load(&bad_key).unwrap_err();
    assert_eq!(error.field, "private_key_pem");
    assert!(error.message.starts_with("unusable private key"), "{error:?}");

    let mut missing_file = leaf.certificate("a");
    missing_file.cert_chain_pem.clear();
    missing_file.cert_chain_file = "/nonexistent/tollgate/chain.pem".into();
    let error = load(&missing_file).unwrap_err();
    assert_eq!(error.field, "cert_chain_file");
    assert!(
        error.message.starts_with("cannot read /nonexistent/tollgate/chain.pem"),
        "{error:?}"
    );
}

#[test]
fn expired_certificates_load_unless_refused() {
    let pki = Pki::new();
    let leaf = pki.leaf_with(&["old.example.com"], Alg::EcdsaP256, |params| {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let mut certificate = leaf.certificate("old");
    let loaded = load(&certificate).unwrap();
    assert_eq!(
        loaded.not_after,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800),
        "2020-01-01T00:00:00Z"
    );
    certificate.refuse_expired = true;
    let error = load(&certificate).unwrap_err();
    assert_eq!(error.field, "cert_chain_pem");
    assert!(
        error.message.contains("expired") && error.message.contains("refuse_expired"),
        "{error:?}"
    );
}

#[test]
fn files_are_read_and_a_replaced_file_is_noticed() {
    let pki = Pki::new();
    let dir = std::env::temp_dir().join(format!("tollgate-tls-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chain = dir.join("chain.pem");
    let key = dir.join("key.pem");
    let first = pki.leaf(&["f.example.com"], Alg::EcdsaP256);
    std::fs::write(&chain, &first.chain_pem).unwrap();
    std::fs::write(&key, first.key.serialize_pem()).unwrap();
    let source = proto::Certificate {
        name: "f".into(),
        cert_chain_file: chain.to_str().unwrap().into(),
        private_key_file: key.to_str().unwrap().into(),
        ..Default::default()
    };
    let loaded = load(&source).unwrap();
    assert_eq!(loaded.key.cert[0], first.leaf_der);
    assert!(loaded.files_unchanged(&source));

    let second = pki.leaf(&["f.example.com"], Alg::Rsa2048);
    std::fs::write(&chain, &second.chain_pem).unwrap();
    std::fs::write(&key, second.key.serialize_pem()).unwrap();
    assert!(!loaded.files_unchanged(&source), "the files changed on disk");
    assert_eq!(load(&source).unwrap().key.cert[0], second.leaf_der);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- SNI

fn sni_host(name: &str, key: &Arc<rustls::sign::CertifiedKey>) -> SniHost {
    SniHost {
        host: name.into(),
        key: Arc::clone(key),
        client_auth: None,
    }
}

fn domains(names: &[&str]) -> Vec<Domain> {
    names.iter().map(|name| Domain::parse(name).unwrap()).collect()
}

#[test]
fn sni_lookup_exact_then_one_label_wildcard() {
    let pki = Pki::new();
    let key = Arc::clone(&load(&pki.leaf(&["x"], Alg::EcdsaP256).certificate("x")).unwrap().key);
    let exact = domains(&["a.example.com", "Www.Example.Org."]);
    let wildcard = domains(&["*.example.com"]);
    let deeper = domains(&["*.b.example.com"]);
    let any = domains(&["*"]);
    let table = SniTable::new([
        (sni_host("exact", &key), exact.as_slice()),
        (sni_host("wildcard", &key), wildcard.as_slice()),
        (sni_host("deeper", &key), deeper.as_slice()),
        (sni_host("any", &key), any.as_slice()),
    ]);
    let host = |name: &str| table.lookup(name).map(|host| &*host.host);
    assert_eq!(host("a.example.com"), Some("exact"));
    assert_eq!(host("A.EXAMPLE.COM."), Some("exact"), "case and trailing dot");
    assert_eq!(host("www.example.org"), Some("exact"));
    assert_eq!(host("c.example.com"), Some("wildcard"));
    assert_eq!(host("x.b.example.com"), Some("deeper"), "the longest wildcard");
    assert_eq!(host("X.B.Example.Com."), Some("deeper"));
    assert_eq!(
        host("b.example.com"),
        Some("wildcard"),
        "b is one label under example.com"
    );
    assert_eq!(host("y.x.c.example.com"), None, "a wildcard covers one label");
    assert_eq!(host("example.com"), None, "a wildcard does not cover its suffix");
    assert_eq!(host("other.org"), None, "\"*\" gives no SNI name");
    assert_eq!(host(""), None);
}

fn listener_settings(unknown_sni: crate::config::UnknownSniPolicy) -> crate::config::ListenerTlsSettings {
    crate::config::ListenerTlsSettings {
        default_certificate: Some("default".into()),
        unknown_sni,
        min_version: crate::config::TlsVersion::Tls12,
        ticket_lifetime: Duration::from_secs(3600),
        session_cache_size: 100,
        handshake_timeout: Duration::from_secs(10),
    }
}

/// Drives a client and a server connection against each other in memory.
/// The server config is chosen like the stream code does: by SNI.
fn handshake(
    tls: &ListenerTls,
    client: &Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let sni = matches!(server_name, ServerName::DnsName(_)).then_some(name);
    let config = tls
        .server_config(sni)
        .ok_or_else(|| rustls::Error::General("rejected: unknown server name".into()))?;
    let mut client = Connection::Client(ClientConnection::new(Arc::clone(client), server_name)?);
    let mut server = Connection::Server(ServerConnection::new(config)?);
    for _ in 0..10 {
        transfer(&mut client, &mut server)?;
        transfer(&mut server, &mut client)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // Let the client take the session tickets sent after the handshake.
            transfer(&mut server, &mut client)?;
            let (Connection::Client(client), Connection::Server(server)) = (client, server) else {
                unreachable!()
            };
            return Ok((client, server));
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

fn client_config(pki: &Pki, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(Arc::clone(certs::provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth(),
    )
}

fn peer_leaf(client: &ClientConnection) -> CertificateDer<'static> {
    client.peer_certificates().unwrap()[0].clone().into_owned()
}

struct Sites {
    pki: Pki,
    exact: Leaf,
    wildcard: Leaf,
    default: Leaf,
    table: Arc<SniTable>,
    default_key: Arc<rustls::sign::CertifiedKey>,
}

fn sites() -> Sites {
    let pki = Pki::new();
    let exact = pki.leaf(&["a.example.com"], Alg::EcdsaP256);
    let wildcard = pki.leaf(&["*.example.com"], Alg::Rsa2048);
    let default = pki.leaf(&["default.test", "127.0.0.1"], Alg::EcdsaP256);
    let key = |leaf: &Leaf| Arc::clone(&load(&leaf.certificate("x")).unwrap().key);
    let exact_domains = domains(&["a.example.com"]);
    let wildcard_domains = domains(&["*.example.com"]);
    let table = Arc::new(SniTable::new([
        (sni_host("exact", &key(&exact)), exact_domains.as_slice()),
        (sni_host("wildcard", &key(&wildcard)), wildcard_domains.as_slice()),
    ]));
    let default_key = key(&default);
    Sites {
        pki,
        exact,
        wildcard,
        default,
        table,
        default_key,
    }
}

#[test]
fn handshakes_pick_the_certificate_by_sni_or_default() {
    let sites = sites();
    let tls = ListenerTls::build(
        "test-sni-default",
        &listener_settings(crate::config::UnknownSniPolicy::DefaultCertificate),
        Arc::clone(&sites.table),
        Some(Arc::clone(&sites.default_key)),
    )
    .unwrap();
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let client = client_config(&sites.pki, versions);
        let (c, s) = handshake(&tls, &client, "a.example.com").unwrap();
        assert_eq!(peer_leaf(&c), sites.exact.leaf_der);
        assert_eq!(s.alpn_protocol(), None, "the client offered no ALPN");
        let (c, _) = handshake(&tls, &client, "Z.Example.Com").unwrap();
        assert_eq!(peer_leaf(&c), sites.wildcard.leaf_der);
        assert_eq!(c.protocol_version(), Some(versions[0].version));
        // No SNI (an IP address): the default certificate.
        let (c, _) = handshake(&tls, &client, "127.0.0.1").unwrap();
        assert_eq!(peer_leaf(&c), sites.default.leaf_der);
    }
    // An unknown name gets the default certificate, which the client refuses.
    let client = client_config(&sites.pki, &[&rustls::version::TLS13]);
    assert!(tls.server_config(Some("unknown.test")).is_some());
    assert!(handshake(&tls, &client, "unknown.test").is_err());
    assert_eq!(tls.handshake_timeout(), Duration::from_secs(10));
}

#[test]
fn reject_policy_refuses_unknown_and_missing_sni() {
    let sites = sites();
    let tls = ListenerTls::build(
        "test-sni-reject",
        &listener_settings(crate::config::UnknownSniPolicy::Reject),
        Arc::clone(&sites.table),
        Some(Arc::clone(&sites.default_key)),
    )
    .unwrap();
    assert!(tls.server_config(Some("unknown.test")).is_none());
    assert!(tls.server_config(None).is_none());
    assert!(tls.server_config(Some("a.example.com")).is_some());
    let client = client_config(&sites.pki, &[&rustls::version::TLS13]);
    assert_eq!(
        peer_leaf(&handshake(&tls, &client, "b.example.com").unwrap().0),
        sites.wildcard.leaf_der
    );
}

#[test]
fn tls13_only_refuses_tls12_and_alpn_is_http11() {
    let sites = sites();
    let mut settings = listener_settings(crate::config::UnknownSniPolicy::DefaultCertificate);
    settings.min_version = crate::config::TlsVersion::Tls13;
    let tls = ListenerTls::build("test-tls13-only", &settings, Arc::clone(&sites.table), None).unwrap();
    assert!(
        tls.server_config(None).is_none(),
        "no default certificate, nothing to serve"
    );
    let tls12 = client_config(&sites.pki, &[&rustls::version::TLS12]);
    assert!(handshake(&tls, &tls12, "a.example.com").is_err());
    let mut alpn = (*client_config(&sites.pki, &[&rustls::version::TLS13])).clone();
    alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (c, _) = handshake(&tls, &Arc::new(alpn), "a.example.com").unwrap();
    assert_eq!(c.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn resumption_state_survives_a_rebuild() {
    let sites = sites();
    let settings = listener_settings(crate::config::UnknownSniPolicy::DefaultCertificate);
    let build = || {
        ListenerTls::build(
            "test-resumption",
            &settings,
            Arc::clone(&sites.table),
            Some(Arc::clone(&sites.default_key)),
        )
        .unwrap()
    };
    let before = build();
    let after = build();
    let (a, b) = (before.server_config(None).unwrap(), after.server_config(None).unwrap());
    assert!(!Arc::ptr_eq(&a, &b), "a rebuild makes a new config");
    assert!(Arc::ptr_eq(&a.ticketer, &b.ticketer), "but keeps the ticket keys");
    assert!(Arc::ptr_eq(&a.session_storage, &b.session_storage));
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let client = client_config(&sites.pki, versions);
        let (c, _) = handshake(&before, &client, "a.example.com").unwrap();
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        let (c, _) = handshake(&after, &client, "a.example.com").unwrap();
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed), "{versions:?}");
    }
    // Another lifetime: new keys, so earlier tickets no longer resume.
    let mut changed = settings.clone();
    changed.ticket_lifetime = Duration::from_secs(7200);
    let rebuilt = ListenerTls::build("test-resumption", &changed, Arc::clone(&sites.table), None).unwrap();
    assert!(!Arc::ptr_eq(
        &a.ticketer,
        &rebuilt.server_config(Some("a.example.com")).unwrap().ticketer
    ));
    let tls13 = client_config(&sites.pki, &[&rustls::version::TLS13]);
    handshake(&before, &tls13, "a.example.com").unwrap();
    let (c, _) = handshake(&rebuilt, &tls13, "a.example.com").unwrap();
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
}

#[test]
fn mtls_hosts_get_their_own_config() {
    let pki = Pki::new();
    let client_ca = Pki::new();
    let plain = pki.leaf(&["plain.example.com"], Alg::EcdsaP256);
    let other = pki.leaf(&["other.example.com"], Alg::EcdsaP256);
    let secure = pki.leaf(&["secure.example.com"], Alg::EcdsaP256);
    let key = |leaf: &Leaf| Arc::clone(&load(&leaf.certificate("x")).unwrap().key);
    let auth = |optional| ClientAuth {
        roots: Arc::new(client_ca.roots()),
        optional,
        fingerprint: 1,
    };
    let (plain_domains, other_domains) = (domains(&["plain.example.com"]), domains(&["other.example.com"]));
    let secure_domains = domains(&["secure.example.com", "*.secure.example.com"]);
    let table = Arc::new(SniTable::new([
        (sni_host("plain", &key(&plain)), plain_domains.as_slice()),
        (sni_host("other", &key(&other)), other_domains.as_slice()),
        (
            SniHost {
                host: "secure".into(),
                key: key(&secure),
                client_auth: Some(auth(false)),
            },
            secure_domains.as_slice(),
        ),
    ]));
    let settings = listener_settings(crate::config::UnknownSniPolicy::Reject);
    let tls = ListenerTls::build("test-mtls", &settings, table, None).unwrap();
    let plain_config = tls.server_config(Some("plain.example.com")).unwrap();
    assert!(Arc::ptr_eq(
        &plain_config,
        &tls.server_config(Some("other.example.com")).unwrap()
    ));
    let secure_config = tls.server_config(Some("secure.example.com")).unwrap();
    assert!(!Arc::ptr_eq(&plain_config, &secure_config));
    assert!(Arc::ptr_eq(
        &secure_config,
        &tls.server_config(Some("x.secure.example.com")).unwrap()
    ));
    assert!(!Arc::ptr_eq(&plain_config.ticketer, &secure_config.ticketer));

    let anonymous = client_config(&pki, &[&rustls::version::TLS13]);
    let client_leaf = client_ca.leaf(&["client"], Alg::EcdsaP256);
    let with_cert = Arc::new(
        ClientConfig::builder_with_provider(Arc::clone(certs::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_client_auth_cert(
                vec![client_leaf.leaf_der.clone()],
                PrivateKeyDer::try_from(client_leaf.key.serialize_der()).unwrap(),
            )
            .unwrap(),
    );
    assert!(handshake(&tls, &anonymous, "plain.example.com").is_ok());
    assert!(matches!(
        handshake(&tls, &anonymous, "secure.example.com"),
        Err(rustls::Error::NoCertificatesPresented)
    ));
    let (_, server) = handshake(&tls, &with_cert, "secure.example.com").unwrap();
    assert_eq!(server.peer_certificates().unwrap()[0], client_leaf.leaf_der);
    // A client certificate from another CA is refused.
    let stranger = Pki::new().leaf(&["client"], Alg::EcdsaP256);
    let wrong = Arc::new(
        ClientConfig::builder_with_provider(Arc::clone(certs::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_client_auth_cert(
                vec![stranger.leaf_der.clone()],
                PrivateKeyDer::try_from(stranger.key.serialize_der()).unwrap(),
            )
            .unwrap(),
    );
    assert!(handshake(&tls, &wrong, "secure.example.com").is_err());
}

// ---------------------------------------------------------------- config

fn host(name: &str, domains: &[&str], tls: Option<proto::HostTls>) -> proto::VirtualHost {
    proto::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes: vec![proto::Route {
            direct_response: Some(proto::DirectResponse {
                body: "ok".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        tls,
    }
}

fn host_tls(certificate: &str) -> Option<proto::HostTls> {
    Some(proto::HostTls {
        certificate: certificate.into(),
        ..Default::default()
    })
}

fn tls_listener(name: &str, address: &str, tls: proto::ListenerTls) -> proto::Listener {
    proto::Listener {
        name: name.into(),
        address: address.into(),
        tls: Some(tls),
        ..Default::default()
    }
}

/// Two hosts with their own certificates, a default certificate, one TLS
/// and one plain listener.
fn tls_config(pki: &Pki) -> proto::Config {
    proto::Config {
        listeners: vec![
            tls_listener(
                "https",
                "127.0.0.1:8443",
                proto::ListenerTls {
                    default_certificate: "default".into(),
                    ..Default::default()
                },
            ),
            proto::Listener {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
                ..Default::default()
            },
        ],
        hosts: vec![
            host("a", &["a.example.com"], host_tls("a")),
            host("b", &["*.b.example.com"], host_tls("b")),
            host("any", &["*"], None),
        ],
        certificates: vec![
            pki.leaf(&["a.example.com"], Alg::EcdsaP256).certificate("a"),
            pki.leaf(&["*.b.example.com"], Alg::EcdsaP256).certificate("b"),
            pki.leaf(&["default.test"], Alg::EcdsaP256).certificate("default"),
        ],
        ..Default::default()
    }
}

fn errors(result: Result<Snapshot, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn snapshot_builds_listener_tls_and_reuses_parsed_certificates() {
    let pki = Pki::new();
    let config = tls_config(&pki);
    let first = Snapshot::build(config.clone(), None).unwrap();
    assert_eq!(first.listener_tls.len(), 1, "only the TLS listener");
    let https = &first.listener_tls["https"];
    assert!(https.server_config(Some("x.b.example.com")).is_some());
    assert!(https.server_config(None).is_some(), "default certificate");
    assert_eq!(first.certificates.len(), 3);

    let mut changed = config.clone();
    changed.certificates[1] = pki.leaf(&["*.b.example.com"], Alg::EcdsaP256).certificate("b");
    let second = Snapshot::build(changed, Some(&first)).unwrap();
    assert!(
        Arc::ptr_eq(&first.certificates["a"], &second.certificates["a"]),
        "unchanged: reused"
    );
    assert!(Arc::ptr_eq(
        &first.certificates["default"],
        &second.certificates["default"]
    ));
    assert!(
        !Arc::ptr_eq(&first.certificates["b"], &second.certificates["b"]),
        "changed: parsed again"
    );
    assert!(
        Arc::ptr_eq(&https.stats, &second.listener_tls["https"].stats),
        "stats survive reloads"
    );
}

#[test]
fn hsts_header_value_per_route() {
    let pki = Pki::new();
    let mut config = tls_config(&pki);
    config.hosts[0].tls.as_mut().unwrap().hsts = Some(proto::Hsts {
        include_subdomains: true,
        preload: true,
        ..Default::default()
    });
    config.hosts[1].tls.as_mut().unwrap().hsts = Some(proto::Hsts {
        max_age: "1h".into(),
        ..Default::default()
    });
    let snapshot = Snapshot::build(config, None).unwrap();
    let hsts = |host: &str| {
        let route = snapshot.router.route(host, "/", &[]).unwrap();
        route.hsts.as_deref().map(str::to_owned)
    };
    assert_eq!(
        hsts("a.example.com").as_deref(),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    assert_eq!(hsts("x.b.example.com").as_deref(), Some("max-age=3600"));
    assert_eq!(hsts("elsewhere.test"), None);
}

#[test]
fn validation_reports_tls_errors_with_paths() {
    let pki = Pki::new();
    let mut config = tls_config(&pki);
    let good = config.certificates[0].clone();
    let mismatched = proto::Certificate {
        private_key_pem: pki.leaf(&["z"], Alg::EcdsaP256).key.serialize_pem(),
        ..config.certificates[1].clone()
    };
    config.certificates[1] = mismatched;
    config.certificates.push(good.clone()); // [3] duplicate name "a"
    config.certificates.push(proto::Certificate {
        name: "both".into(),
        cert_chain_file: "/x.pem".into(),
        ..good.clone()
    }); // [4]
    config.certificates.push(proto::Certificate {
        name: "none".into(),
        private_key_pem: String::new(),
        ..good
    }); // [5]
    config.listeners.push(tls_listener(
        "no-default",
        "127.0.0.1:9443",
        proto::ListenerTls {
            min_version: "1.1".into(),
            ticket_lifetime: "forever".into(),
            handshake_timeout: "0s".into(),
            ..Default::default()
        },
    ));
    config.listeners.push(tls_listener(
        "bad-default",
        "127.0.0.1:10443",
        proto::ListenerTls {
            default_certificate: "missing".into(),
            ticket_lifetime: "2d".into(),
            unknown_sni: proto::UnknownSni::Reject as i32,
            ..Default::default()
        },
    ));
    config.hosts.push(host("c", &["c.example.com"], host_tls("nope")));
    config.hosts.push(host(
        "d",
        &["d.example.com"],
        Some(proto::HostTls {
            client_ca_pem: "garbage".into(),
            client_certificate_optional: true,
            hsts: Some(proto::Hsts {
                max_age: "soon".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    ));
    config.hosts.push(host("e", &["A.example.com"], host_tls("a")));
    let errors = errors(Snapshot::build(config, None));
    let expected = [
        "listeners[2].tls.min_version: invalid TLS version \"1.1\": expected \"1.2\" or \"1.3\"",
        "listeners[2].tls.default_certificate: required when unknown_sni is default_certificate (the default); set one or use unknown_sni: reject",
        "listeners[3].tls.default_certificate: unknown certificate \"missing\"",
        "listeners[3].tls.ticket_lifetime: must be from 2s to 12h (the ticket key provider keeps a key at most 12h)",
        "certificates[1].private_key_pem: key does not match the certificate (used by host \"b\")",
        "certificates[3].name: duplicate certificate name \"a\" (also certificates[0])",
        "certificates[4].cert_chain_pem: only one of cert_chain_file, cert_chain_pem may be set",
        "certificates[5]: one of private_key_file, private_key_pem is required",
        "hosts[3].tls.certificate: unknown certificate \"nope\"",
        "hosts[4].tls.certificate: required with a client CA: client certificates are verified per SNI name",
        "hosts[4].tls.client_ca_pem: no certificate found in the CA bundle",
        "hosts[5].domains[0]: domain \"a.example.com\" is already used by hosts[0].domains[0]",
    ];
    for line in expected {
        assert!(errors.iter().any(|e| e == line), "missing {line:?} in {errors:#?}");
    }
    let prefixed = [
        "listeners[2].tls.ticket_lifetime: invalid duration \"forever\"",
        "listeners[2].tls.handshake_timeout: duration \"0s\" must be greater than zero",
        "hosts[4].tls.hsts.max_age: invalid duration \"soon\"",
    ];
    for prefix in prefixed {
        assert!(
            errors.iter().any(|e| e.starts_with(prefix)),
            "missing {prefix:?} in {errors:#?}"
        );
    }
}

#[test]
fn metrics_show_certificate_expiry_per_host() {
    let pki = Pki::new();
    let mut config = tls_config(&pki);
    config.certificates[1] = pki
        .leaf_with(&["*.b.example.com"], Alg::EcdsaP256, |params| {
            let soon = SystemTime::now() + Duration::from_secs(3 * 24 * 3600);
            let seconds = soon.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(seconds);
        })
        .certificate("b");
    let snapshot = Snapshot::build(config, None).unwrap();
    let text = crate::metrics::encode(&snapshot);
    let value = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("missing {prefix} in:\n{text}"));
        line[prefix.len()..].trim().parse().unwrap()
    };
    let a = value("tollgate_certificate_expiry_seconds{certificate=\"a\",host=\"a\"}");
    assert!(a > 300.0 * 24.0 * 3600.0, "rcgen's default validity is years: {a}");
    let b = value("tollgate_certificate_expiry_seconds{certificate=\"b\",host=\"b\"}");
    assert!((2.9 * 24.0 * 3600.0..3.1 * 24.0 * 3600.0).contains(&b), "{b}");
    assert!(value("tollgate_certificate_expiry_seconds{certificate=\"default\",host=\"\"}") > 0.0);
    assert_eq!(value("tollgate_certificates_expiring{host=\"a\"}"), 0.0);
    assert_eq!(value("tollgate_certificates_expiring{host=\"b\"}"), 1.0);
    assert!(!text.contains("tollgate_certificates_expiring{host=\"\"}"));
}

#[test]
fn a_tls_listener_needs_some_certificate() {
    let config = proto::Config {
        listeners: vec![tls_listener(
            "https",
            "127.0.0.1:8443",
            proto::ListenerTls {
                unknown_sni: proto::UnknownSni::Reject as i32,
                ..Default::default()
            },
        )],
        hosts: vec![host("any", &["*"], None)],
        ..Default::default()
    };
    assert_eq!(
        errors(Snapshot::build(config, None)),
        ["listeners[0].tls: no certificate to serve: set default_certificate or give hosts a tls.certificate"]
    );
}

#[test]
fn yaml_names_the_unknown_sni_policy_and_files_load() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["y.example.com"], Alg::EcdsaP256);
    let dir = std::env::temp_dir().join(format!("tollgate-tls-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chain.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key.serialize_pem()).unwrap();
    let yaml = format!(
        r#"
listeners:
  - name: https
    address: 127.0.0.1:8443
    tls: {{ unknown_sni: reject, min_version: "1.3", session_cache_size: 0 }}
certificates:
  - name: y
    cert_chain_file: {dir}/chain.pem
    private_key_file: {dir}/key.pem
hosts:
  - domains: [y.example.com]
    tls: {{ certificate: y }}
    routes: [{{ direct_response: {{ body: ok }} }}]
"#,
        dir = dir.display()
    );
    let config = crate::config::parse_yaml(&yaml).unwrap();
    assert_eq!(
        config.listeners[0].tls.as_ref().unwrap().unknown_sni,
        proto::UnknownSni::Reject as i32
    );
    let snapshot = Snapshot::build(config, None).unwrap();
    let https = &snapshot.listener_tls["https"];
    assert!(https.server_config(None).is_none());
    assert!(https.server_config(Some("y.example.com")).is_some());
    assert_eq!(snapshot.certificates["y"].dns_names, ["y.example.com"]);
    let bad = yaml.replace("unknown_sni: reject", "unknown_sni: drop");
    let error = crate::config::parse_yaml(&bad).unwrap_err().to_string();
    assert!(error.contains("unknown variant `drop`"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
