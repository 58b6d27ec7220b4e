//! Mutual TLS over real loopback connections, with the committed development PKI in `certs/dev`
//! and with PKIs generated on the fly.
//!
//! Each handshake runs a rustls server built by `tls::server_config` on 127.0.0.1 (port 0) and a
//! client on the same runtime. A refused client is checked on the server's side, with the reason
//! rustls gives: in TLS 1.3 the client finishes its half of the handshake before the server has
//! verified its certificate, so the client only learns of the refusal when it next reads.

#[path = "support/pki.rs"]
mod pki;

use passerelle::tls::{self, PeerIdentity, TlsError, dev};
use pki::{OtherCa, crl_of_another_ca, dev_ca_issuer, dev_crl, impostor_crl};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, KeyPair, SanType, SerialNumber,
    date_time_ymd,
};
use rustls::pki_types::ServerName;
use rustls::{
    CertificateError, CipherSuite, ClientConfig, Error, PeerIncompatible, ProtocolVersion,
};
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// No loopback handshake takes anywhere near this long; past it, the test fails.
const LIMIT: Duration = Duration::from_secs(10);

fn dev_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dev::DEFAULT_DIR)
}

fn dev_server() -> Arc<ServerConfig> {
    tls::server_config(&dev::files(&dev_dir(), dev::SERVER)).expect("the dev server config")
}

fn dev_client(name: &str) -> Arc<ClientConfig> {
    tls::client_config(&dev::files(&dev_dir(), name)).expect("the dev client config")
}

/// What the server saw of an accepted connection.
#[derive(Debug)]
struct Accepted {
    identity: PeerIdentity,
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    alpn: Option<Vec<u8>>,
    kind: Option<rustls::HandshakeKind>,
}

/// Both ends of one connection attempt.
struct Outcome {
    server: io::Result<Accepted>,
    client: io::Result<()>,
}

impl Outcome {
    /// The accepted connection, after checking that the client got the server's reply.
    fn accepted(self) -> Accepted {
        let accepted = self.server.expect("the server accepts the handshake");
        self.client.expect("the client reads the server's reply");
        accepted
    }

    /// The rustls error that made the server refuse the client, after checking that the client
    /// failed too.
    fn refused(self) -> Error {
        let error = match self.server {
            Ok(accepted) => panic!("the server accepted {:?}", accepted.identity),
            Err(error) => error,
        };
        assert!(
            self.client.is_err(),
            "the client did not notice the refusal"
        );
        rustls_error(&error).unwrap_or_else(|| panic!("not a TLS error: {error}"))
    }
}

fn rustls_error(error: &io::Error) -> Option<Error> {
    error.get_ref()?.downcast_ref::<Error>().cloned()
}

/// Accepts one connection with `server`, connects to it with `client` as `localhost`; the server
/// replies `ok` to a client it accepts and closes.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut stream = TlsAcceptor::from(server).accept(tcp).await?;
        let (_, connection) = stream.get_ref();
        let accepted = Accepted {
            identity: tls::peer_identity(connection.peer_certificates().unwrap_or_default())
                .map_err(io::Error::other)?,
            version: connection.protocol_version(),
            suite: connection.negotiated_cipher_suite().map(|s| s.suite()),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            kind: connection.handshake_kind(),
        };
        stream.write_all(b"ok").await?;
        stream.shutdown().await?;
        Ok(accepted)
    });
    let client_side = async {
        let tcp = TcpStream::connect(address).await?;
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut stream = TlsConnector::from(client).connect(name, tcp).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        if reply == b"ok" {
            Ok(())
        } else {
            Err(io::Error::other(format!("the server replied {reply:?}")))
        }
    };
    let client = timeout(LIMIT, client_side).await.expect("the client hung");
    let server = timeout(LIMIT, server_side)
        .await
        .expect("the server hung")
        .expect("the server task panicked");
    Outcome { server, client }
}

#[tokio::test]
async fn a_partner_certificate_is_accepted_and_identified_by_its_uri() {
    let accepted = handshake(dev_server(), dev_client("sn.consulat.casablanca"))
        .await
        .accepted();
    assert_eq!(
        accepted.identity.uris,
        ["urn:partner:sn.consulat.casablanca"]
    );
    assert_eq!(
        accepted.identity.partner_ids().collect::<Vec<_>>(),
        ["sn.consulat.casablanca"]
    );
    let der = tls::load_certs(&dev_dir().join("sn.consulat.casablanca.pem")).unwrap();
    assert_eq!(
        accepted.identity.fingerprint,
        format!("sha256:{}", hex::encode(Sha256::digest(&der[0])))
    );
    assert_eq!(accepted.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(accepted.alpn.as_deref(), Some(tls::ALPN_HTTP_1_1));
}

#[tokio::test]
async fn every_committed_partner_and_the_gateway_client_are_accepted() {
    for id in registry_partners() {
        let id = id.as_str();
        let accepted = handshake(dev_server(), dev_client(id)).await.accepted();
        assert_eq!(accepted.identity.uris, [format!("urn:partner:{id}")]);
    }
    let accepted = handshake(dev_server(), dev_client(dev::GATEWAY_CLIENT))
        .await
        .accepted();
    assert_eq!(accepted.identity.uris, [dev::GATEWAY_URI]);
    assert_eq!(accepted.identity.partner_ids().count(), 0);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let client = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(tls::load_roots(&dev_dir().join("ca.pem")).unwrap())
        .with_no_client_auth();
    let error = handshake(dev_server(), Arc::new(client)).await.refused();
    assert!(matches!(error, Error::NoCertificatesPresented), "{error:?}");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    let error = handshake(dev_server(), dev_client(dev::REVOKED))
        .await
        .refused();
    assert!(
        matches!(error, Error::InvalidCertificate(CertificateError::Revoked)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let error = handshake(dev_server(), dev_client(dev::EXPIRED))
        .await
        .refused();
    assert!(
        matches!(
            error,
            Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{error:?}"
    );
}

/// The unknown certificate is valid: TLS accepts it and reports the partner id it names.
/// Refusing it, because no registry entry has that id, is the registry's job.
#[tokio::test]
async fn a_valid_certificate_unknown_to_the_registry_passes_tls_with_its_identity() {
    let accepted = handshake(dev_server(), dev_client(dev::UNKNOWN))
        .await
        .accepted();
    assert_eq!(accepted.identity.uris, ["urn:partner:unknown.example"]);
    assert_eq!(
        accepted.identity.partner_ids().collect::<Vec<_>>(),
        ["unknown.example"]
    );
}

/// A chain is issued by the CA of the bundle it leads to, through an intermediate of its, and
/// not by a CA whose name an intermediate of another CA takes.
#[test]
fn a_chain_is_issued_by_the_ca_it_leads_to() {
    let dir = tempfile::tempdir().unwrap();
    let other = OtherCa::new("Another institution's CA");
    let bundle = dir.path().join("bundle.pem");
    let dev_ca = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    std::fs::write(&bundle, format!("{dev_ca}{}", other.cert_pem)).unwrap();
    let other_crl = dir.path().join("other.crl");
    std::fs::write(&other_crl, other.crl()).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER).with_crl(&other_crl);
    files.ca = bundle;
    let (_, verifier) = tls::server_config_with_verifier(&files, None).unwrap();
    let issuers = verifier.issuers();
    let dev_name = "CN=Passerelle development CA, O=Passerelle (development only)";
    let other_name = "CN=Another institution's CA, O=Passerelle (development only)";
    let dev_print = tls::fingerprint(&tls::load_certs(&dev_dir().join("ca.pem")).unwrap()[0]);
    let chain_of = |ca: &OtherCa, folder: &str| {
        let folder = dir.path().join(folder);
        std::fs::create_dir(&folder).unwrap();
        tls::load_certs(&ca.client_files(&folder, "urn:partner:iom.ma").cert).unwrap()
    };
    let genuine = chain_of(&OtherCa::intermediate("Partner Issuing CA 1"), "genuine");
    assert!(issuers.issued(dev_name, &genuine));
    assert!(issuers.issued(&dev_print, &genuine));
    assert!(!issuers.issued(other_name, &genuine));
    let posing = OtherCa::intermediate_under("Passerelle development CA", &other);
    let forged = chain_of(&posing, "forged");
    assert!(!issuers.issued(dev_name, &forged));
    assert!(!issuers.issued(&dev_print, &forged));
    assert!(issuers.issued(other_name, &forged));
}

/// The webhook calls and the broker connection never resume a session, even with a server
/// that offers it: a resumed handshake would not check the server's certificate against the
/// CRLs read since.
#[tokio::test]
async fn the_gateways_clients_never_resume_a_session() {
    let mut resuming = (*dev_server()).clone();
    resuming.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    resuming.send_tls13_tickets = 2;
    let resuming = Arc::new(resuming);
    // The server resumes a client that asks to.
    let mut asking = (*dev_client("ma.dgsn")).clone();
    asking.resumption = rustls::client::Resumption::in_memory_sessions(64);
    let asking = Arc::new(asking);
    handshake(resuming.clone(), asking.clone()).await.accepted();
    let again = handshake(resuming.clone(), asking).await.accepted();
    assert_eq!(again.kind, Some(rustls::HandshakeKind::Resumed));
    // The webhook client does not ask, nor does the broker's (`client_config`).
    let (_, verifier) =
        tls::server_config_with_verifier(&dev::files(&dev_dir(), dev::SERVER), None).unwrap();
    let gateway = dev::files(&dev_dir(), dev::GATEWAY_CLIENT);
    let webhook = tls::endpoint_client_config(&gateway.cert, &gateway.key, verifier).unwrap();
    for client in [webhook, dev_client("ma.dgsn")] {
        for _ in 0..2 {
            let accepted = handshake(resuming.clone(), client.clone()).await.accepted();
            assert_eq!(accepted.kind, Some(rustls::HandshakeKind::Full));
        }
    }
}

/// The other CA takes the development CA's name, so that only its key differs.
#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = OtherCa::new("Passerelle development CA");
    let client =
        tls::client_config(&other.client_files(dir.path(), "urn:partner:ma.interieur")).unwrap();
    let error = handshake(dev_server(), client).await.refused();
    assert!(
        matches!(
            error,
            Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        ),
        "{error:?}"
    );
}

/// An intermediate CA whose CRL is missing: the certificates it issued have an unknown
/// revocation status, and unknown is refused. (A CA of the bundle without its CRL is refused
/// at start, see `a_ca_of_the_bundle_without_a_crl_is_refused_at_start`.)
#[tokio::test]
async fn a_certificate_whose_revocation_status_is_unknown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let intermediate = OtherCa::intermediate("Partner Issuing CA 1");
    let client =
        tls::client_config(&intermediate.client_files(dir.path(), "urn:partner:iom.ma")).unwrap();
    let error = handshake(dev_server(), client).await.refused();
    assert!(
        matches!(
            error,
            Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)
        ),
        "{error:?}"
    );
}

/// The dev CA's CRL, revoking nothing, current until `next_update`, in DER as CAs often
/// publish them.
fn dev_crl_until(next_update: time::OffsetDateTime) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 1),
        next_update,
        crl_number: SerialNumber::from_slice(&[7]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&dev_ca_issuer())
    .unwrap()
    .der()
    .to_vec()
}

/// Checks that a handshake was refused for a CRL past its `nextUpdate`.
fn refused_for_a_stale_crl(error: Error) {
    assert!(
        matches!(
            error,
            Error::InvalidCertificate(
                CertificateError::ExpiredRevocationList
                    | CertificateError::ExpiredRevocationListContext { .. }
            )
        ),
        "{error:?}"
    );
}

/// A CRL past its `nextUpdate` refuses every certificate of its CA (a CA that stops publishing
/// CRLs leaves no certificate's status known), whether it was stale at start or went stale
/// while the server ran; the verifier says which CRL is stale, with its file and its CA.
#[tokio::test]
async fn a_stale_crl_refuses_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("stale.crl");
    std::fs::write(&crl, dev_crl_until(date_time_ymd(2021, 2, 1))).unwrap();
    let mut server_files = dev::files(&dev_dir(), dev::SERVER);
    server_files.crls = vec![crl.clone()];
    let (server, verifier) = tls::server_config_with_verifier(&server_files, None).unwrap();
    let stale = verifier.stale_crls();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(
        stale[0].contains("stale.crl") && stale[0].contains("Passerelle development CA"),
        "{stale:?}"
    );
    refused_for_a_stale_crl(handshake(server, dev_client("iom.ma")).await.refused());

    // Current for six more seconds (five and a fraction: a CRL says its times in whole
    // seconds), long enough for a configuration and a handshake on a busy machine.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    std::fs::write(&crl, dev_crl_until(soon)).unwrap();
    let (server, verifier) = tls::server_config_with_verifier(&server_files, None).unwrap();
    assert_eq!(
        verifier.next_update(),
        Some(u64::try_from(soon.unix_timestamp()).unwrap())
    );
    assert!(verifier.stale_crls().is_empty());
    handshake(server.clone(), dev_client("iom.ma"))
        .await
        .accepted();
    tokio::time::sleep(Duration::from_secs(7)).await;
    refused_for_a_stale_crl(handshake(server, dev_client("iom.ma")).await.refused());
}

/// A CA bundle holding a certificate that is no CA is refused when the configuration is built,
/// and the gateway's own certificate out of date before, rather than making every handshake
/// fail.
#[test]
fn a_leaf_in_the_ca_bundle_and_an_expired_server_certificate_are_refused() {
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.ca = dev_dir().join("server.pem");
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::NotCa { index: 1, .. }), "{error}");

    // The gateway checks its own certificates before it builds its configurations (a test
    // endpoint may present an expired one on purpose).
    let error = tls::check_own_certificate(&dev_dir().join("expired.pem")).unwrap_err();
    assert!(
        matches!(error, TlsError::OwnCertificateOutOfDate { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("expired.pem"), "{error}");
    tls::check_own_certificate(&dev_dir().join("server.pem")).unwrap();
}

/// A CA made on the fly, and a bundle in `dir` of the development CA and it.
fn another_ca_beside_the_development_one(dir: &Path) -> (OtherCa, PathBuf) {
    let other = OtherCa::new("Another partner CA");
    let bundle = dir.join("bundle.pem");
    let dev_ca = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    std::fs::write(&bundle, format!("{dev_ca}{}", other.cert_pem)).unwrap();
    (other, bundle)
}

/// One CA's CRL that is stale already does not stop the other CAs' new CRLs from being taken:
/// a revocation by another CA applies at the next reload.
#[tokio::test]
async fn a_stale_crl_of_one_ca_does_not_hold_back_another_cas_new_crl() {
    let dir = tempfile::tempdir().unwrap();
    let (other, bundle) = another_ca_beside_the_development_one(dir.path());
    let others = dir.path().join("other.crl");
    let stale = CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 1),
        next_update: date_time_ymd(2021, 2, 1),
        crl_number: SerialNumber::from_slice(&[3]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&other.issuer)
    .unwrap();
    std::fs::write(&others, stale.der()).unwrap();
    let ours = dir.path().join("dev.crl");
    std::fs::write(&ours, dev_crl(20, &[dev::REVOKED])).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.ca = bundle;
    files.crls = vec![ours.clone(), others];
    let (server, verifier) = tls::server_config_with_verifier(&files, None).unwrap();
    assert_eq!(verifier.stale_crls().len(), 1);
    handshake(server.clone(), dev_client("iom.ma"))
        .await
        .accepted();

    std::fs::write(&ours, dev_crl(21, &[dev::REVOKED, "iom.ma"])).unwrap();
    assert!(taken(verifier.reload_if_changed()));
    only_iom_ma_is_revoked(&server).await;
}

/// One CA's changed CRL file that is refused (here an older CRL, as a replay over plain HTTP
/// would give) does not hold back another CA's new CRL of the same reload: each changed file is
/// taken or refused on its own.
#[tokio::test]
async fn a_refused_crl_file_does_not_hold_back_another_cas_new_crl() {
    let dir = tempfile::tempdir().unwrap();
    let (other, bundle) = another_ca_beside_the_development_one(dir.path());
    let others = dir.path().join("other.crl");
    // The other CA's CRL number 2, current until 2099.
    std::fs::write(&others, other.crl_until(date_time_ymd(2099, 1, 1))).unwrap();
    let ours = dir.path().join("dev.crl");
    std::fs::write(&ours, dev_crl(20, &[dev::REVOKED])).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.ca = bundle;
    files.crls = vec![ours.clone(), others.clone()];
    let (server, verifier) = tls::server_config_with_verifier(&files, None).unwrap();
    handshake(server.clone(), dev_client("iom.ma"))
        .await
        .accepted();

    // At once: the other CA's file is replaced by its CRL number 1, and the development CA's
    // by a CRL that revokes IOM Morocco.
    std::fs::write(&others, other.crl()).unwrap();
    std::fs::write(&ours, dev_crl(21, &[dev::REVOKED, "iom.ma"])).unwrap();
    let reload = verifier.reload_if_changed();
    assert_eq!(reload.taken, [ours]);
    assert_eq!(reload.refused.len(), 1, "{:?}", reload.refused);
    let refused = reload.refused[0].to_string();
    assert!(
        matches!(reload.refused[0], TlsError::CrlOlder { .. }) && refused.contains("other.crl"),
        "{refused}"
    );
    only_iom_ma_is_revoked(&server).await;
    // The refused file is tried again at each reload, and said once while it fails so.
    let reload = verifier.reload_if_changed();
    assert!(
        reload.taken.is_empty() && reload.refused.is_empty(),
        "{reload:?}"
    );
    // Its CA's current CRL back: taken, without a word.
    std::fs::write(&others, other.crl_until(date_time_ymd(2099, 1, 1))).unwrap();
    assert_eq!(verifier.reload_if_changed().taken, [others]);
    only_iom_ma_is_revoked(&server).await;
}

/// Whether a reload took changed CRL files, which it must have done without refusing any.
fn taken(reload: tls::CrlReload) -> bool {
    assert!(reload.refused.is_empty(), "{:?}", reload.refused);
    !reload.taken.is_empty()
}

/// The one refusal of a reload that took nothing.
fn refused_only(reload: tls::CrlReload) -> TlsError {
    assert!(reload.taken.is_empty(), "{:?}", reload.taken);
    let mut refused = reload.refused;
    assert_eq!(refused.len(), 1, "{refused:?}");
    refused.remove(0)
}

/// Every CA of the bundle must have a CRL: without one, every certificate it issued would be
/// refused, its status unknown. A configuration whose CRLs are all another CA's is refused.
#[test]
fn a_ca_of_the_bundle_without_a_crl_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.crl");
    std::fs::write(&other, crl_of_another_ca("Partner Issuing CA 1")).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.crls = vec![other];
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::CaWithoutCrl { .. }), "{error}");
    assert!(error.to_string().contains("tls.crls"), "{error}");

    // A bundle of two CAs with the CRL of only one: the other is named.
    let other = OtherCa::new("Another partner CA");
    let bundle = dir.path().join("bundle.pem");
    let dev_ca = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    std::fs::write(&bundle, format!("{dev_ca}{}", other.cert_pem)).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.ca = bundle.clone();
    let error = tls::server_config(&files).unwrap_err();
    assert!(error.to_string().contains("Another partner CA"), "{error}");

    // A CA re-keyed under the same name is another CA: the CRL of the old key does not cover
    // the new one, whose certificates the verifier would refuse, the CRL's signature not its.
    let (old, new) = (OtherCa::new("Re-keyed CA"), OtherCa::new("Re-keyed CA"));
    std::fs::write(&bundle, format!("{dev_ca}{}{}", old.cert_pem, new.cert_pem)).unwrap();
    let old_crl = dir.path().join("old.crl");
    std::fs::write(&old_crl, old.crl()).unwrap();
    files.crls = vec![dev_dir().join("crl.pem"), old_crl.clone()];
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::CaWithoutCrl { .. }), "{error}");
    assert!(error.to_string().contains("Re-keyed CA"), "{error}");
    let new_crl = dir.path().join("new.crl");
    std::fs::write(&new_crl, new.crl()).unwrap();
    files.crls.push(new_crl);
    tls::server_config(&files).expect("each key has its CRL");
}

/// The certificates of both keys of a CA re-keyed under the same name are accepted, each
/// checked against its own key's CRL.
#[tokio::test]
async fn both_keys_of_a_re_keyed_ca_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (OtherCa::new("Re-keyed CA"), OtherCa::new("Re-keyed CA"));
    let bundle = dir.path().join("bundle.pem");
    let dev_ca = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    std::fs::write(&bundle, format!("{dev_ca}{}{}", old.cert_pem, new.cert_pem)).unwrap();
    let (old_crl, new_crl) = (dir.path().join("old.crl"), dir.path().join("new.crl"));
    std::fs::write(&old_crl, old.crl()).unwrap();
    std::fs::write(&new_crl, new.crl()).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.ca = bundle;
    files.crls = vec![dev_dir().join("crl.pem"), old_crl, new_crl];
    let server = tls::server_config(&files).unwrap();
    let mut clients = Vec::new();
    for (ca, folder) in [(&old, "old"), (&new, "new")] {
        let folder = dir.path().join(folder);
        std::fs::create_dir(&folder).unwrap();
        let client_files = ca.client_files(&folder, "urn:partner:iom.ma");
        let client = tls::client_config(&client_files).unwrap();
        handshake(server.clone(), client.clone()).await.accepted();
        clients.push((client, client_files.cert));
    }

    // The new key's next CRL revokes the certificate it issued; the old key's stays good.
    let serial = {
        let der = tls::load_certs(&clients[1].1).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
        cert.raw_serial().to_vec()
    };
    let revoking = CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 2),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from_slice(&[2]),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: date_time_ymd(2021, 1, 2),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&new.issuer)
    .unwrap();
    std::fs::write(&files.crls[2], revoking.der()).unwrap();
    let (server, verifier) = tls::server_config_with_verifier(&files, None).unwrap();
    handshake(server.clone(), clients[0].0.clone())
        .await
        .accepted();
    let error = handshake(server, clients[1].0.clone()).await.refused();
    assert!(is_revoked(&error), "{error:?}");

    // In one reload, the old key's next CRL and an older CRL of the new key's series: the
    // first is taken, the second refused alone (the two keys share a name, not a series).
    let numbered = |ca: &OtherCa, number: u8| {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2021, 1, 3),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from_slice(&[number]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .der()
        .to_vec()
    };
    std::fs::write(&files.crls[1], numbered(&old, 3)).unwrap();
    std::fs::write(&files.crls[2], numbered(&new, 1)).unwrap();
    let reload = verifier.reload_if_changed();
    assert_eq!(reload.taken, [files.crls[1].clone()]);
    assert_eq!(reload.refused.len(), 1, "{:?}", reload.refused);
    assert!(
        matches!(reload.refused[0], TlsError::CrlOlder { .. })
            && reload.refused[0].to_string().contains("new.crl"),
        "{}",
        reload.refused[0]
    );
}

#[tokio::test]
async fn a_tls_1_2_only_client_is_accepted_with_an_ecdhe_aead_suite() {
    let files = dev::files(&dev_dir(), "ma.dgsn");
    let client = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(tls::load_roots(&files.ca).unwrap())
        .with_client_auth_cert(
            tls::load_certs(&files.cert).unwrap(),
            tls::load_key(&files.key).unwrap(),
        )
        .unwrap();
    let accepted = handshake(dev_server(), Arc::new(client)).await.accepted();
    assert_eq!(accepted.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(accepted.identity.uris, ["urn:partner:ma.dgsn"]);
    let suite = format!("{:?}", accepted.suite.unwrap());
    assert!(
        suite.starts_with("TLS_ECDHE_ECDSA_WITH_") && suite.contains("GCM"),
        "{suite}"
    );
}

/// A TLS 1.2 ClientHello record written by hand, since rustls cannot offer CBC suites or old
/// protocol versions: `version` is the legacy version field, `suites` the offered cipher suites.
fn client_hello(version: u16, suites: &[u16]) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut extensions = Vec::new();
    // supported_groups: x25519, secp256r1.
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed.
    extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    extension(&mut extensions, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]);
    // extended_master_secret, renegotiation_info.
    extension(&mut extensions, 0x0017, &[]);
    extension(&mut extensions, 0xff01, &[0]);

    let mut body = Vec::new();
    body.extend(version.to_be_bytes());
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]); // null compression only
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);

    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends a raw ClientHello to the dev server, and returns the server's error (if any) and the
/// first five bytes of its answer plus two more (a record header and, for an alert, its level
/// and description).
async fn raw_handshake(hello: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let server = dev_server();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        TlsAcceptor::from(server).accept(tcp).await.map(drop)
    });
    let client_side = async {
        let mut tcp = TcpStream::connect(address).await?;
        tcp.write_all(&hello).await?;
        let mut answer = vec![0; 7];
        tcp.read_exact(&mut answer).await?;
        io::Result::Ok(answer)
    };
    let answer = timeout(LIMIT, client_side)
        .await
        .expect("the client hung")
        .expect("the server answers");
    let server = timeout(LIMIT, server_side)
        .await
        .expect("the server hung")
        .expect("the server task panicked");
    (server, answer)
}

/// The hand-written hello is sound: offering one ECDHE AEAD suite gets a ServerHello.
#[tokio::test]
async fn a_hand_written_hello_with_an_aead_suite_gets_a_server_hello() {
    let (_, answer) = raw_handshake(client_hello(0x0303, &[0xc02b])).await;
    assert_eq!(answer[0], 0x16, "not a handshake record: {answer:02x?}");
    assert_eq!(answer[5], 0x02, "not a ServerHello: {answer:02x?}");
}

/// A client offering only CBC, 3DES and static-RSA suites gets a handshake_failure alert.
#[tokio::test]
async fn a_client_offering_only_cbc_suites_is_refused() {
    let cbc = [
        0xc009, 0xc00a, 0xc023, 0xc024, // ECDHE_ECDSA with AES-CBC
        0xc013, 0xc014, 0xc027, 0xc028, // ECDHE_RSA with AES-CBC
        0x002f, 0x0035, 0x003c, 0x003d, // RSA with AES-CBC
        0x000a, // RSA with 3DES-EDE-CBC
    ];
    let (server, answer) = raw_handshake(client_hello(0x0303, &cbc)).await;
    assert_eq!(answer[0], 0x15, "not an alert: {answer:02x?}");
    assert_eq!(
        answer[5..],
        [2, 40],
        "not a fatal handshake_failure: {answer:02x?}"
    );
    let error = rustls_error(&server.expect_err("the server accepted CBC suites")).unwrap();
    assert!(
        matches!(
            error,
            Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon)
        ),
        "{error:?}"
    );
}

/// A TLS 1.1 client is refused, even when it offers a suite the gateway has.
#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    let (server, answer) = raw_handshake(client_hello(0x0302, &[0xc02b, 0xc009])).await;
    assert_eq!(answer[0], 0x15, "not an alert: {answer:02x?}");
    assert_eq!(
        answer[5..],
        [2, 70],
        "not a fatal protocol_version: {answer:02x?}"
    );
    let error = rustls_error(&server.expect_err("the server accepted TLS 1.1")).unwrap();
    assert!(matches!(error, Error::PeerIncompatible(_)), "{error:?}");
}

#[test]
fn the_configs_offer_only_tls_1_3_and_1_2_with_ecdhe_aead_suites() {
    let server = dev_server();
    let suites: Vec<String> = server
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|suite| format!("{:?}", suite.suite()))
        .collect();
    assert_eq!(suites.len(), 9, "{suites:?}");
    for suite in &suites {
        assert!(
            suite.starts_with("TLS13_AES_")
                || suite.starts_with("TLS13_CHACHA20_POLY1305")
                || suite.starts_with("TLS_ECDHE_"),
            "{suite}"
        );
        assert!(
            suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305"),
            "{suite}"
        );
    }
    let client = dev_client("iom.sn");
    assert_eq!(
        client.crypto_provider().cipher_suites.len(),
        server.crypto_provider().cipher_suites.len()
    );
}

#[test]
fn a_server_without_a_crl_is_refused() {
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.crls.clear();
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::NoCrl { .. }), "{error}");
    assert!(!error.is_peer_fault());
}

#[test]
fn load_errors_name_the_file() {
    let dir = dev_dir();
    let missing = dir.join("nobody.pem");
    let mut files = dev::files(&dir, dev::SERVER);
    files.cert = missing.clone();
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::Read { .. }), "{error}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    // A key where the CA bundle should be.
    let mut files = dev::files(&dir, dev::SERVER);
    files.ca = dir.join("ca.key");
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::Empty { .. }), "{error}");
    assert!(error.to_string().contains("ca.key"), "{error}");

    // A certificate where the CRL should be.
    let mut files = dev::files(&dir, dev::SERVER);
    files.crls = vec![dir.join("ca.pem")];
    let error = tls::server_config(&files).unwrap_err();
    assert!(error.to_string().contains("ca.pem"), "{error}");

    // A key that is not the certificate's.
    let mut files = dev::files(&dir, dev::SERVER);
    files.key = dir.join("iom.sn.key");
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::Identity { .. }), "{error}");
    assert!(error.to_string().contains("iom.sn.key"), "{error}");
}

#[test]
fn the_common_name_is_never_an_identity() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "ma.interieur");
    params.subject_alt_names = vec![SanType::DnsName("ma.interieur".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let identity = tls::peer_identity(&[cert.der().clone()]).unwrap();
    assert!(identity.uris.is_empty(), "{identity:?}");
    assert_eq!(identity.partner_ids().count(), 0);
}

#[test]
fn every_uri_is_read_in_order() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI("urn:partner:iom.ma".try_into().unwrap()),
        SanType::DnsName("iom.example".try_into().unwrap()),
        SanType::URI("https://iom.example/".try_into().unwrap()),
    ];
    let cert = params.self_signed(&key).unwrap();
    let identity = tls::peer_identity(&[cert.der().clone()]).unwrap();
    assert_eq!(
        identity.uris,
        ["urn:partner:iom.ma", "https://iom.example/"]
    );
    assert_eq!(identity.partner_ids().collect::<Vec<_>>(), ["iom.ma"]);
}

#[tokio::test]
async fn a_generated_pki_works_and_is_new_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    // A temporary file an earlier run left, readable by others: the key is not written
    // through it with its permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("ca.key.tmp"), "left over").unwrap();
        std::fs::set_permissions(
            out.join("ca.key.tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let pki = dev::generate_dev_pki(&out, &["iom.sn", "ma.dgsn"]).unwrap();
    let names: Vec<&str> = pki.certificates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ca",
            "server",
            "iom.sn",
            "ma.dgsn",
            "gateway-client",
            "revoked",
            "expired",
            "unknown"
        ]
    );
    for cert in &pki.certificates {
        assert!(cert.cert.is_file() && cert.key.is_file(), "{cert:?}");
        let der = tls::load_certs(&cert.cert).unwrap();
        assert_eq!(tls::fingerprint(&der[0]), cert.fingerprint);
    }
    assert!(pki.crl.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the CA key is readable by others: {mode:o}"
        );
    }

    let server = tls::server_config(&dev::files(&out, dev::SERVER)).unwrap();
    let client = tls::client_config(&dev::files(&out, "iom.sn")).unwrap();
    let accepted = handshake(server.clone(), client.clone()).await.accepted();
    assert_eq!(accepted.identity.uris, ["urn:partner:iom.sn"]);
    let revoked = tls::client_config(&dev::files(&out, dev::REVOKED)).unwrap();
    let error = handshake(server.clone(), revoked).await.refused();
    assert!(
        matches!(error, Error::InvalidCertificate(CertificateError::Revoked)),
        "{error:?}"
    );

    // A fresh CA: the committed server does not know this client.
    let mut stranger = dev::files(&out, "iom.sn");
    stranger.ca = dev_dir().join("ca.pem");
    stranger.crls = vec![dev_dir().join(dev::CRL_FILE)];
    let stranger = tls::client_config(&stranger).unwrap();
    let error = handshake(dev_server(), stranger).await.refused();
    assert!(
        matches!(
            error,
            Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        ),
        "{error:?}"
    );

    // Running again overwrites everything with a new CA.
    let again = dev::generate_dev_pki(&out, &["iom.sn", "ma.dgsn"]).unwrap();
    assert_ne!(
        again.certificates[0].fingerprint,
        pki.certificates[0].fingerprint
    );
    let roots: RootCertStore = tls::load_roots(&out.join("ca.pem")).unwrap();
    assert_eq!(roots.len(), 1);
    let fresh = tls::server_config(&dev::files(&out, dev::SERVER)).unwrap();
    let client = tls::client_config(&dev::files(&out, "ma.dgsn")).unwrap();
    handshake(fresh, client).await.accepted();
}

#[test]
fn the_generator_refuses_unsafe_partner_ids_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let error = dev::generate_dev_pki(&out, &["iom.sn", "../escape"]).unwrap_err();
    assert!(
        matches!(error, dev::DevPkiError::InvalidPartnerId(_)),
        "{error}"
    );
    let error = dev::generate_dev_pki(&out, &["ca"]).unwrap_err();
    assert!(
        matches!(error, dev::DevPkiError::ReservedPartnerId(_)),
        "{error}"
    );
    assert!(!out.exists());
}

#[test]
fn the_committed_pki_holds_every_documented_file() {
    let dir = dev_dir();
    let mut stems: Vec<&str> = vec![
        dev::CA,
        dev::SERVER,
        dev::GATEWAY_CLIENT,
        dev::REVOKED,
        dev::EXPIRED,
        dev::UNKNOWN,
    ];
    let partners = registry_partners();
    assert!(partners.len() >= 8, "{partners:?}");
    stems.extend(partners.iter().map(String::as_str));
    for stem in stems {
        for extension in ["pem", "key"] {
            let path = dir.join(format!("{stem}.{extension}"));
            assert!(path.is_file(), "{} is missing", path.display());
        }
    }
    assert_eq!(tls::load_crls(&dir.join(dev::CRL_FILE)).unwrap().len(), 1);
}

/// Remembers the refusals a verifier reports.
#[derive(Default)]
struct Reported(std::sync::Mutex<Vec<(Vec<u8>, tls::CertificateRefusal)>>);

impl tls::CertificateRefusalObserver for Reported {
    fn refused(
        &self,
        certificate: &rustls::pki_types::CertificateDer<'_>,
        reason: tls::CertificateRefusal,
    ) {
        self.0.lock().unwrap().push((certificate.to_vec(), reason));
    }
}

/// The end-entity certificate (DER) of the committed development PKI's `name`.
fn dev_certificate(name: &str) -> Vec<u8> {
    tls::load_certs(&dev::files(&dev_dir(), name).cert).unwrap()[0].to_vec()
}

/// Presents a certificate and signs the handshake with another key: the client does not prove
/// that it holds the certificate's key.
#[derive(Debug)]
struct WrongKey(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for WrongKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that presents `name`'s development certificate and signs with a fresh key.
fn client_with_wrong_key(name: &str) -> Arc<ClientConfig> {
    let provider = tls::crypto_provider();
    let chain = tls::load_certs(&dev::files(&dev_dir(), name).cert).unwrap();
    let other = KeyPair::generate().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(other.serialize_der()).unwrap();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(tls::load_roots(&dev_dir().join("ca.pem")).unwrap())
        .with_client_cert_resolver(Arc::new(WrongKey(Arc::new(certified))));
    config.alpn_protocols = vec![tls::ALPN_HTTP_1_1.to_vec()];
    Arc::new(config)
}

/// The development server, whose verifier reports the certificates it refuses.
fn reporting_dev_server() -> (Arc<ServerConfig>, Arc<Reported>) {
    let reported = Arc::new(Reported::default());
    let (server, _) = tls::server_config_with_verifier(
        &dev::files(&dev_dir(), dev::SERVER),
        Some(reported.clone()),
    )
    .unwrap();
    (server, reported)
}

/// Each refused certificate is reported with its reason; accepted ones, and handshakes with no
/// certificate, are not.
#[tokio::test]
async fn refused_certificates_are_reported_with_their_reason() {
    let (server, reported) = reporting_dev_server();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = OtherCa::new("Another CA");
    let other_files = other_ca.client_files(dir.path(), "urn:partner:ma.interieur");
    for client in [
        dev_client(dev::REVOKED),
        dev_client(dev::EXPIRED),
        tls::client_config(&other_files).unwrap(),
        client_with_wrong_key("iom.ma"),
    ] {
        handshake(server.clone(), client).await.refused();
    }
    handshake(server.clone(), dev_client("iom.ma"))
        .await
        .accepted();
    let anonymous = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(tls::load_roots(&dev_dir().join("ca.pem")).unwrap())
        .with_no_client_auth();
    handshake(server, Arc::new(anonymous)).await.refused();
    let other_certificate = tls::load_certs(&other_files.cert).unwrap()[0].to_vec();
    use tls::CertificateRefusal::{Expired, KeyNotProved, Revoked, UnknownIssuer};
    assert_eq!(
        *reported.0.lock().unwrap(),
        [
            (dev_certificate(dev::REVOKED), Revoked),
            (dev_certificate(dev::EXPIRED), Expired),
            (other_certificate, UnknownIssuer),
            (dev_certificate("iom.ma"), KeyNotProved),
        ]
    );
    let codes: Vec<&str> = [Revoked, Expired, UnknownIssuer, KeyNotProved]
        .into_iter()
        .map(tls::CertificateRefusal::code)
        .collect();
    assert_eq!(
        codes,
        [
            "certificate-revoked",
            "certificate-expired",
            "certificate-unknown-issuer",
            "certificate-key-not-proved"
        ]
    );
}

/// A client certificate of the development CA for `urn:partner:iom.ma`, with the given
/// purposes, written into `dir` with its key; the client configuration that presents it.
fn dev_client_with_purposes(
    dir: &Path,
    file: &str,
    extended: Vec<rcgen::ExtendedKeyUsagePurpose>,
    usages: Vec<rcgen::KeyUsagePurpose>,
) -> (Arc<ClientConfig>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI("urn:partner:iom.ma".try_into().unwrap())];
    params.extended_key_usages = extended;
    params.key_usages = usages;
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    let cert = params.signed_by(&key, &dev_ca_issuer()).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let files = tls::TlsFiles::new(dev_dir().join("ca.pem"), cert_path, key_path);
    (tls::client_config(&files).unwrap(), cert.der().to_vec())
}

/// A client certificate must say that it is for client authentication: one without an extended
/// key usage (which rustls's verifier alone takes as good for every purpose), or whose key
/// usage does not allow signatures, is refused at the handshake as of the wrong purpose.
#[tokio::test]
async fn a_certificate_that_does_not_say_it_is_for_client_authentication_is_refused() {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
    let (server, reported) = reporting_dev_server();
    let dir = tempfile::tempdir().unwrap();
    let (no_purpose, no_purpose_der) = dev_client_with_purposes(dir.path(), "none", vec![], vec![]);
    let (no_signature, no_signature_der) = dev_client_with_purposes(
        dir.path(),
        "encipher",
        vec![Eku::ClientAuth],
        vec![Ku::KeyEncipherment],
    );
    for client in [no_purpose, no_signature] {
        let error = handshake(server.clone(), client).await.refused();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(CertificateError::InvalidPurpose)
            ),
            "{error:?}"
        );
    }
    // Both said, or the extended key usage alone: accepted.
    for (file, usages) in [("both", vec![Ku::DigitalSignature]), ("eku", vec![])] {
        let (client, _) = dev_client_with_purposes(dir.path(), file, vec![Eku::ClientAuth], usages);
        handshake(server.clone(), client).await.accepted();
    }
    use tls::CertificateRefusal::InvalidPurpose;
    assert_eq!(
        *reported.0.lock().unwrap(),
        [
            (no_purpose_der, InvalidPurpose),
            (no_signature_der, InvalidPurpose)
        ]
    );
}

fn is_revoked(error: &Error) -> bool {
    matches!(error, Error::InvalidCertificate(CertificateError::Revoked))
}

/// A CA publishes a new CRL: the running server's verifier reads it again, and the next
/// handshake of a newly revoked certificate is refused; a CRL that cannot be used is refused
/// and the CRLs in use stay.
#[tokio::test]
async fn a_new_crl_is_taken_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("partners.crl");
    std::fs::write(&crl, dev_crl(10, &[dev::REVOKED])).unwrap();
    let mut files = dev::files(&dev_dir(), dev::SERVER);
    files.crls = vec![crl.clone()];
    let (server, verifier) = tls::server_config_with_verifier(&files, None).unwrap();

    handshake(server.clone(), dev_client("iom.ma"))
        .await
        .accepted();
    assert!(!taken(verifier.reload_if_changed()), "nothing changed");

    // IOM Morocco's certificate is revoked by the CA's next CRL, written with the old file's
    // modification time kept (a copy that keeps times): what the file holds tells the change.
    let before = std::fs::metadata(&crl).unwrap().modified().unwrap();
    std::fs::write(&crl, dev_crl(11, &[dev::REVOKED, "iom.ma"])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&crl)
        .unwrap()
        .set_modified(before)
        .unwrap();
    assert!(taken(verifier.reload_if_changed()));
    only_iom_ma_is_revoked(&server).await;

    // So is an older CRL of the CA (a lower CRL number), still signed and current, which would
    // accept IOM Morocco's certificate again.
    std::fs::write(&crl, dev_crl(9, &[dev::REVOKED])).unwrap();
    let error = refused_only(verifier.reload_if_changed());
    assert!(matches!(error, TlsError::CrlOlder { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("CRL number 09 is below the number 0b"),
        "{error}"
    );
    only_iom_ma_is_revoked(&server).await;
    // An older CRL put beside the current one, before it or after it, counts for nothing: the
    // verifier, which consults the first CRL of a CA it finds, is given the newest only.
    for (first, second) in [(9, 11), (11, 9)] {
        let both = |number: u8| {
            if number == 11 {
                dev_crl(11, &[dev::REVOKED, "iom.ma"])
            } else {
                dev_crl(number, &[dev::REVOKED])
            }
        };
        std::fs::write(&crl, format!("{}{}", both(first), both(second))).unwrap();
        assert!(taken(verifier.reload_if_changed()), "{first} then {second}");
        only_iom_ma_is_revoked(&server).await;
    }

    // A damaged file is reported, and the CRL read last stays in use.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot a CRL\n-----END X509 CRL-----\n",
    )
    .unwrap();
    refused_only(verifier.reload_if_changed());
    only_iom_ma_is_revoked(&server).await;

    // So is a CRL in the CA's name that the CA did not sign (another CA of the same name): taken,
    // it would refuse every certificate of the CA.
    std::fs::write(&crl, impostor_crl(12, &[dev::REVOKED])).unwrap();
    let error = refused_only(verifier.reload_if_changed());
    assert!(error.to_string().contains("did not sign it"), "{error}");
    only_iom_ma_is_revoked(&server).await;
    // And at start.
    let error = tls::server_config(&files).unwrap_err();
    assert!(matches!(error, TlsError::CrlIssuer { .. }), "{error}");

    // So is a CRL past its nextUpdate, which would refuse every certificate of the CA; a
    // failed change is reported once, not at every check until the file changes again.
    std::fs::write(&crl, dev_crl_until(date_time_ymd(2021, 2, 1))).unwrap();
    let error = refused_only(verifier.reload_if_changed());
    assert!(matches!(error, TlsError::CrlExpired { .. }), "{error}");
    assert!(!taken(verifier.reload_if_changed()), "reported once");
    only_iom_ma_is_revoked(&server).await;
    // So is a set of files that leaves a CA of the bundle without a CRL.
    std::fs::write(&crl, crl_of_another_ca("Partner Issuing CA 1")).unwrap();
    let error = refused_only(verifier.reload_if_changed());
    assert!(matches!(error, TlsError::CrlWithdrawn { .. }), "{error}");
    assert!(error.to_string().contains("partners.crl"), "{error}");
    only_iom_ma_is_revoked(&server).await;

    // A CRL of a CA that is not in the bundle (an intermediate's, checked against the
    // intermediate when a chain goes through it) is taken beside the CA's own.
    let intermediate = dir.path().join("intermediate.crl");
    std::fs::write(&intermediate, crl_of_another_ca("Partner Issuing CA 1")).unwrap();
    std::fs::write(&crl, dev_crl(13, &[dev::REVOKED, "iom.ma"])).unwrap();
    files.crls = vec![crl.clone(), intermediate];
    let (server, _) = tls::server_config_with_verifier(&files, None).unwrap();
    only_iom_ma_is_revoked(&server).await;
}

/// The newest CRL used of each series is kept across starts (in the data folder, for the
/// gateway): the next start refuses an older CRL as a reload does, and says how to start a new
/// record when the record itself is damaged.
#[tokio::test]
async fn an_older_crl_is_refused_at_the_next_start_too() {
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("partners.crl");
    let marks = dir.path().join("crl-marks.json");
    let mut files = dev::files(&dev_dir(), dev::SERVER).with_crl_marks(&marks);
    files.crls = vec![crl.clone()];
    std::fs::write(&crl, dev_crl(11, &[dev::REVOKED, "iom.ma"])).unwrap();
    let (_, verifier) = tls::server_config_with_verifier(&files, None).unwrap();
    assert!(marks.is_file(), "the record was not written");
    // A reload to a newer CRL is kept too.
    std::fs::write(&crl, dev_crl(12, &[dev::REVOKED, "iom.ma"])).unwrap();
    assert!(taken(verifier.reload_if_changed()));
    drop(verifier);

    for older in [9, 11] {
        std::fs::write(&crl, dev_crl(older, &[dev::REVOKED])).unwrap();
        let error = tls::server_config(&files).unwrap_err();
        assert!(
            matches!(error, TlsError::CrlOlder { .. }),
            "{older}: {error}"
        );
    }
    std::fs::write(&crl, dev_crl(12, &[dev::REVOKED, "iom.ma"])).unwrap();
    let server = tls::server_config(&files).unwrap();
    only_iom_ma_is_revoked(&server).await;
    // Without a record, the files are taken as they are.
    std::fs::write(&crl, dev_crl(9, &[dev::REVOKED])).unwrap();
    let mut unrecorded = files.clone();
    unrecorded.crl_marks = None;
    tls::server_config(&unrecorded).unwrap();

    std::fs::write(&marks, "not a record").unwrap();
    let error = tls::server_config(&files).unwrap_err().to_string();
    assert!(
        error.contains("cannot be read") && error.contains("delete it"),
        "{error}"
    );
}

/// IOM Morocco's handshake is refused as revoked; the ministry's is accepted.
async fn only_iom_ma_is_revoked(server: &Arc<ServerConfig>) {
    let error = handshake(server.clone(), dev_client("iom.ma"))
        .await
        .refused();
    assert!(is_revoked(&error), "{error:?}");
    handshake(server.clone(), dev_client("ma.interieur"))
        .await
        .accepted();
}

/// The partners of the sample registry: the committed development PKI has a client
/// certificate for each (`passerelle certs dev` issues one per registry partner).
fn registry_partners() -> Vec<String> {
    passerelle::registry::Registry::partner_ids(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/registry.toml"),
    )
    .expect("the sample registry")
}

#[test]
fn certs_dev_issues_one_client_certificate_per_registry_partner() {
    let scratch = tempfile::tempdir().unwrap();
    let registry = scratch.path().join("registry.toml");
    std::fs::write(
        &registry,
        "[[partner]]\nid = \"iom.sn\"\nrole = \"iom\"\n\n\
         [[partner]]\nid = \"gn.consulat.rabat\"\nrole = \"consulate\"\n",
    )
    .unwrap();
    let out = scratch.path().join("pki");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["certs", "dev", "--out"])
        .arg(&out)
        .arg("--registry")
        .arg(&registry)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for id in ["iom.sn", "gn.consulat.rabat"] {
        let der = tls::load_certs(&out.join(format!("{id}.pem"))).unwrap();
        let identity = tls::peer_identity(&der).unwrap();
        assert_eq!(identity.uris, [format!("urn:partner:{id}")]);
    }
    assert!(
        !out.join("ma.dgsn.pem").exists(),
        "only the registry's partners"
    );
}
