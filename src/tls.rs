//! Mutual TLS: the rustls server and client configurations, the peer's certificate identity,
//! and certificate revocation lists (CRLs).
//!
//! This module owns the gateway's TLS policy:
//!
//! - **Versions and suites.** TLS 1.3 and TLS 1.2 only, with ephemeral (EC)DHE key exchange and
//!   AEAD ciphers only: AES-GCM and ChaCha20-Poly1305. The list is spelled out here rather than
//!   taken from the provider's defaults, so that a library upgrade cannot widen it.
//! - **Client authentication.** Every client presents a certificate that chains to the partner CA
//!   bundle, is within its validity period, names the client-authentication purpose in its
//!   extended key usage (and allows digital signatures in its key usage, if it has one), and is
//!   not revoked by any configured CRL. There is no anonymous access.
//! - **Revocation.** Every certificate in the chain, apart from the trust anchor itself, is
//!   checked. A certificate whose status no configured CRL can tell is refused, and so is one
//!   checked against a CRL whose `nextUpdate` has passed: a missing or stale CRL shows up as a
//!   refused handshake, never as a silent bypass. A server configuration therefore needs a CRL
//!   of every CA of its bundle, and refuses to be built without (see [`server_config`]): a CA
//!   without one would have every certificate it issued refused. The server's CRLs can be read
//!   again while it runs ([`ClientVerifier`]), and say which of them are stale.
//! - **Identity.** [`peer_identity`] reads the URI subject alternative names and the SHA-256
//!   fingerprint of the verified end-entity certificate. The subject's common name is never read.
//!   [`issuers`] tells which CA of the bundle a chain leads to, for partners bound to their CA.
//!
//! It must not decide who a partner is, nor what a partner may do: matching `urn:partner:<id>`
//! and fingerprint pins against the registry, and roles, belong to the registry. It never takes an
//! identity from a request body, opens no socket and writes no log: the certificates a handshake
//! refuses are reported to an observer ([`server_config_with_verifier`]), which audits them. The
//! one file it writes is the record of the newest CRL used of each series, where the caller
//! asks for one ([`TlsFiles::crl_marks`]), so that a restart does not take an older CRL back.
//! [`dev`] generates the development PKI, which is for development and tests only.

mod crls;
pub mod dev;
pub mod issuers;
mod verifiers;

pub use crls::load_crls;
use crls::{CrlFile, CrlInUse, StaleMarks};
use issuers::Issuers;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use verifiers::{AnchorGroups, Verifiers};
use x509_parser::extensions::GeneralName;

/// The protocol versions the gateway speaks, most preferred first: TLS 1.3, then TLS 1.2.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one application protocol negotiated through ALPN: HTTP/1.1.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The prefix of the URI subject alternative name that names a partner: `urn:partner:<id>`.
pub const PARTNER_URI_PREFIX: &str = "urn:partner:";

/// The prefix of a certificate fingerprint as [`fingerprint`] writes it: `sha256:<hex>`.
pub const FINGERPRINT_PREFIX: &str = "sha256:";

/// The files that make up one side of a mutual TLS connection.
///
/// Certificates and keys are PEM. CRLs may be PEM (`X509 CRL` blocks, several per file) or DER
/// (one per file), as certificate authorities publish them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The trusted CA bundle (PEM, one or more certificates). On a server, the CAs that issue the
    /// partners' client certificates; on a client, the CAs that issue the servers' certificates.
    pub ca: PathBuf,
    /// The certificate chain this side presents (PEM), end-entity certificate first.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The revocation lists of the CAs in `ca`. Required on a server; optional on a client, where
    /// the peer's chain is checked against them when there are some.
    pub crls: Vec<PathBuf>,
    /// On a server, where to keep the newest CRL used of each series, so that an older one is
    /// refused at the next start as on a reload ([`ClientVerifier`]); `None`: not kept.
    pub crl_marks: Option<PathBuf>,
}

impl TlsFiles {
    /// Names a CA bundle, a certificate chain and its key, with no CRL yet.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            crls: Vec::new(),
            crl_marks: None,
        }
    }

    /// Keeps the newest CRL used of each series in `path` (see [`TlsFiles::crl_marks`]).
    #[must_use]
    pub fn with_crl_marks(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl_marks = Some(path.into());
        self
    }

    /// Adds a CRL file.
    #[must_use]
    pub fn with_crl(mut self, crl: impl Into<PathBuf>) -> Self {
        self.crls.push(crl.into());
        self
    }
}

/// Why a TLS configuration could not be built, or a peer's identity could not be read.
///
/// [`TlsError::is_peer_fault`] tells whose fault it is: the peer's certificate, or the gateway's
/// own files and settings. Every error about a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} file {}{}: {source}", path.display(), working_folder_of(path))]
    Read {
        /// What the file should hold: "CA bundle", "certificate", "private key" or "CRL".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("the {what} file {} is not valid PEM: {detail}", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it, in words ([`pem_detail`]).
        detail: String,
    },
    /// A file holds no item of the expected kind (for example a key where a certificate is due).
    #[error("the {what} file {} holds no {what} in PEM form (a DER file, or PEM blocks of another kind, are not read)", path.display())]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA bundle cannot serve as a trust anchor.
    #[error("certificate #{index} of the CA bundle {} is not a usable trust anchor: {source}", path.display())]
    TrustAnchor {
        /// The CA bundle.
        path: PathBuf,
        /// The position of the certificate in the bundle, from 1.
        index: usize,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// A certificate of the CA bundle whose names cannot be read.
    #[error("certificate #{index} of the CA bundle {} cannot be parsed: its subject name cannot be read", path.display())]
    UnreadableCa {
        /// The CA bundle.
        path: PathBuf,
        /// The position of the certificate in the bundle, from 1.
        index: usize,
    },
    /// A CRL file was rejected (unparsable, or an unsupported CRL form).
    #[error("the CRL file {} cannot be used: {source}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// Why the verifier refused it.
        source: rustls::server::VerifierBuilderError,
    },
    /// A CRL is not signed by a CA of the bundle (webpki would check its signature only when it
    /// first used it for a certificate, and then refuse every certificate it is about).
    #[error("the CRL file {} cannot be used: {reason}", path.display())]
    CrlIssuer {
        /// The CRL file.
        path: PathBuf,
        /// Whose CRL it is, and why it was refused.
        reason: String,
    },
    /// A CRL is past its `nextUpdate`: it refuses every certificate of its CA. A reload that
    /// would replace a current CRL by such a one is refused.
    #[error(
        "the CRL file {} cannot be used: the CRL of {issuer} was to be replaced by {next_update}; \
         fetch the CA's current CRL",
        path.display()
    )]
    CrlExpired {
        /// The CRL file.
        path: PathBuf,
        /// The CA that issued the CRL.
        issuer: String,
        /// When the CRL stopped being current (its `nextUpdate`), RFC 3339.
        next_update: String,
    },
    /// A CRL is older than a CRL of its CA already used: taking it could take back
    /// revocations.
    #[error(
        "the CRL file {} cannot be used: the CRL of {issuer} is older than one already used \
         ({reason}); an older CRL could accept again certificates revoked since",
        path.display()
    )]
    CrlOlder {
        /// The CRL file.
        path: PathBuf,
        /// The CA that issued the CRL.
        issuer: String,
        /// How it is older: its number, or its `thisUpdate`.
        reason: String,
    },
    /// The record of the CRLs used before cannot be read or written.
    #[error(
        "the record of the CRLs used before, {}, cannot be {doing}: {reason}; it lets the start \
         refuse a CRL older than one already used (once the CRL files are checked, delete it to \
         start a new record)",
        path.display()
    )]
    CrlMarks {
        /// The record's file.
        path: PathBuf,
        /// "read" or "written".
        doing: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A changed CRL file would leave a CA of the bundle without a CRL signed by its key: the
    /// change is refused, and the CRLs taken from the file before stay.
    #[error(
        "the CRL file {} cannot be used: with it, no CRL file holds a CRL signed by {ca_name}, a \
         CA of the bundle, whose certificates would all be refused; the CRLs taken from it \
         before stay in use (put that CA's CRL back in it, or in another file)",
        path.display()
    )]
    CrlWithdrawn {
        /// The CRL file.
        path: PathBuf,
        /// The CA left without a CRL.
        ca_name: String,
    },
    /// A CA of the bundle has no CRL among the CRL files signed by its key: every certificate it
    /// issued would be refused, its revocation status unknown.
    #[error(
        "no CRL file holds a CRL signed by {ca_name}, a CA of the bundle {}: every certificate it \
         issued would be refused; add its CRL to tls.crls (a CA re-keyed under the same name \
         needs a CRL of each key)",
        ca.display()
    )]
    CaWithoutCrl {
        /// The CA bundle.
        ca: PathBuf,
        /// The CA's subject.
        ca_name: String,
    },
    /// A certificate of the CA bundle is no CA (a version 3 certificate whose basic
    /// constraints do not say `cA`): taken as a trust anchor, it would let whoever holds its key
    /// vouch for clients.
    #[error(
        "certificate #{index} of the CA bundle {} ({subject}) is not a CA certificate",
        path.display()
    )]
    NotCa {
        /// The CA bundle.
        path: PathBuf,
        /// The position of the certificate in the bundle, from 1.
        index: usize,
        /// The certificate's subject.
        subject: String,
    },
    /// The gateway's own certificate is outside its validity period: every peer would refuse
    /// it.
    #[error(
        "the certificate {} is valid from {not_before} to {not_after}, not now: renew it",
        path.display()
    )]
    OwnCertificateOutOfDate {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`.
        not_before: String,
        /// Its `notAfter`.
        not_after: String,
    },
    /// A server configuration was asked for without any CRL.
    #[error(
        "no CRL configured: client certificates must be checked against the revocation list of every CA in {}",
        ca.display()
    )]
    NoCrl {
        /// The CA bundle that needs CRLs.
        ca: PathBuf,
    },
    /// The certificate verifier could not be built from the CA bundle and the CRLs.
    #[error("the CA bundle {} and its CRLs do not make a certificate verifier: {source}", ca.display())]
    Verifier {
        /// The CA bundle.
        ca: PathBuf,
        /// Why rustls refused them.
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate chain and the private key do not make a usable identity (for example the
    /// key does not belong to the certificate, or its algorithm is not supported).
    #[error("the certificate {} and the key {} cannot be used together: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// Why rustls refused them.
        source: rustls::Error,
    },
    /// rustls refused the protocol settings (a bug in this module, not in the files).
    #[error("rustls refused the TLS protocol settings: {0}")]
    Protocol(#[source] rustls::Error),
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's end-entity certificate cannot be parsed.
    #[error("the end-entity certificate cannot be parsed as X.509: {0}")]
    PeerCertificate(String),
}

impl TlsError {
    /// Whether the peer is at fault (its certificate is missing or malformed). Every other error
    /// comes from the gateway's own files or settings.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::NoPeerCertificate | Self::PeerCertificate(_))
    }
}

/// The ring crypto provider restricted to the gateway's cipher suites and key exchange groups.
///
/// Cipher suites, in order of preference:
///
/// - TLS 1.3: `TLS13_AES_256_GCM_SHA384`, `TLS13_AES_128_GCM_SHA256`,
///   `TLS13_CHACHA20_POLY1305_SHA256`;
/// - TLS 1.2: `TLS_ECDHE_{ECDSA,RSA}_WITH_AES_256_GCM_SHA384`,
///   `TLS_ECDHE_{ECDSA,RSA}_WITH_AES_128_GCM_SHA256`,
///   `TLS_ECDHE_{ECDSA,RSA}_WITH_CHACHA20_POLY1305_SHA256`.
///
/// Key exchange: X25519, P-256 and P-384. No CBC, RC4, 3DES, NULL or static-RSA suite exists in
/// the list, and none can be negotiated.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite as suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            ring::kx_group::X25519,
            ring::kx_group::SECP256R1,
            ring::kx_group::SECP384R1,
        ],
        ..ring::default_provider()
    })
}

/// Builds the gateway's server configuration: TLS 1.3 and 1.2, AEAD suites only, a client
/// certificate required and checked against the CA bundle and the CRLs, ALPN `http/1.1`.
///
/// `files.crls` must hold the revocation list of every CA that issues client certificates,
/// intermediates included: a client certificate whose revocation status cannot be told is
/// refused, and so is one checked against an expired CRL. To take new CRLs into account while
/// serving, use [`server_config_with_verifier`] and [`ClientVerifier::reload_if_changed`].
///
/// Session resumption is off: every connection runs a full handshake, so that every connection
/// has its certificate checked against the validity period and the CRLs of the configuration it
/// was accepted with. At the gateway's volume a full handshake costs little.
///
/// The identity of an accepted client is read with [`peer_identity`] from the connection's
/// peer certificates.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_verifier(files, None).map(|(config, _)| config)
}

/// Like [`server_config`], and also returns the configuration's client-certificate verifier,
/// whose CRLs can be read again while the server runs ([`ClientVerifier::reload_if_changed`]).
/// The verifier tells `observer`, if given, of every client certificate a handshake refuses.
pub fn server_config_with_verifier(
    files: &TlsFiles,
    observer: Option<Arc<dyn CertificateRefusalObserver>>,
) -> Result<(Arc<ServerConfig>, Arc<ClientVerifier>), TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(ClientVerifier::new(files, provider.clone(), observer)?);
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok((Arc::new(config), verifier))
}

/// The server's client-certificate verifier: the CA bundle and CRLs of [`server_config`], with
/// CRLs that can be read again while the server runs.
///
/// CAs publish a new CRL before the current one's `nextUpdate`, and an expired CRL refuses
/// every client, so a long-running gateway must take new CRLs without a restart.
/// [`ClientVerifier::reload_if_changed`] rebuilds the verifier when CRL files changed, taking
/// or refusing each changed file on its own; each handshake uses the verifier current when it
/// starts. The CA bundle is read once: a new CA
/// needs a restart (the CA names the server sends as hints are fixed at start).
///
/// Written here, rather than taken from rustls, because rustls verifiers are immutable: this
/// only swaps one rustls verifier for another behind the trait.
pub struct ClientVerifier {
    ca: PathBuf,
    crls: Vec<PathBuf>,
    roots: Arc<RootCertStore>,
    /// The CA bundle's certificates as read at start, which sign the CRLs read later.
    ca_certs: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
    /// The bundle's CAs, in groups that share no name (see [`verifiers`]).
    anchors: AnchorGroups,
    current: RwLock<Arc<Verifiers>>,
    /// The CRL files as last taken, with what they held: a file whose contents differ is read
    /// again.
    files: Mutex<Vec<CrlFile>>,
    /// Told of each certificate a handshake refuses.
    observer: Option<Arc<dyn CertificateRefusalObserver>>,
    /// How many times the CRLs were read again: a connection verified under an earlier
    /// generation has its certificate checked again ([`ClientVerifier::recheck`]).
    generation: AtomicU64,
    /// When they were last read again, in ms since the epoch (0: never since start).
    reloaded_at_ms: AtomicU64,
    /// The CRLs in use: each one's issuer, file and `nextUpdate`.
    in_use: RwLock<Vec<CrlInUse>>,
    /// When the CRLs in use go stale: a connection verified before one of them did is
    /// verified again.
    stale_marks: StaleMarks,
    /// The last failed reload reported, so that the same failure is reported once while the
    /// files are tried again at each call.
    last_failure: Mutex<Option<String>>,
    /// The bundle's CAs by name, to tell which one issued a chain.
    issuers: Issuers,
    /// The newest CRL used of each series since start, and before it when kept in
    /// `crl_marks`: a reload, and the next start, refuse an older one.
    used: Mutex<Vec<CrlInUse>>,
    /// Where the CRLs used are kept across starts ([`TlsFiles::crl_marks`]).
    crl_marks: Option<PathBuf>,
}

/// What [`ClientVerifier::reload_if_changed`] did.
#[derive(Debug, Default)]
pub struct CrlReload {
    /// The changed CRL files whose CRLs are in use from now on.
    pub taken: Vec<PathBuf>,
    /// Why the other changed files were refused: their CRLs taken before stay in use. Each
    /// refusal is said once while it lasts (empty while the same files fail the same way).
    pub refused: Vec<TlsError>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("ca", &self.ca)
            .field("crls", &self.crls)
            .finish_non_exhaustive()
    }
}

/// Now, in ms since the epoch.
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ClientVerifier {
    fn new(
        files: &TlsFiles,
        provider: Arc<CryptoProvider>,
        observer: Option<Arc<dyn CertificateRefusalObserver>>,
    ) -> Result<Self, TlsError> {
        if files.crls.is_empty() {
            return Err(TlsError::NoCrl {
                ca: files.ca.clone(),
            });
        }
        let (ca_certs, roots) = load_ca_bundle(&files.ca)?;
        for (index, cert) in ca_certs.iter().enumerate() {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
                continue;
            };
            // A certificate whose basic constraints say it is no CA, or a version 3 one without
            // them (RFC 5280 asks them of every CA certificate); a version 1 root, which has no
            // extensions, is taken, as the verifier takes it.
            let not_a_ca = match parsed.basic_constraints() {
                Ok(Some(constraints)) => !constraints.value.ca,
                Ok(None) => parsed.version() == x509_parser::x509::X509Version::V3,
                Err(_) => false,
            };
            if not_a_ca {
                return Err(TlsError::NotCa {
                    path: files.ca.clone(),
                    index: index + 1,
                    subject: parsed.subject().to_string(),
                });
            }
        }
        let issuers = Issuers::new(&files.ca, &ca_certs, &provider)?;
        let roots = Arc::new(roots);
        let bundle = crls::Bundle {
            path: &files.ca,
            cas: &ca_certs,
            roots: &roots,
            provider: &provider,
        };
        let (crl_files, set) = crls::load_checked_crls(&bundle, &files.crls)?;
        let anchors = AnchorGroups::new(&files.ca, &ca_certs)?;
        let verifier = anchors.verifiers(&set.crls, &provider)?;
        let in_use = set.in_use;
        let used = match &files.crl_marks {
            Some(marks) => {
                let before = crls::read_crl_marks(marks)?;
                crls::refuse_older_than(&before, &in_use)?;
                let used = crls::used_after(&before, &in_use);
                crls::write_crl_marks(marks, &used)?;
                used
            }
            None => in_use.clone(),
        };
        Ok(ClientVerifier {
            ca: files.ca.clone(),
            crls: files.crls.clone(),
            hints: roots.subjects(),
            roots,
            ca_certs,
            provider,
            anchors,
            current: RwLock::new(Arc::new(verifier)),
            files: Mutex::new(crl_files),
            observer,
            generation: AtomicU64::new(0),
            reloaded_at_ms: AtomicU64::new(0),
            stale_marks: StaleMarks::new(&in_use),
            in_use: RwLock::new(in_use),
            last_failure: Mutex::new(None),
            issuers,
            used: Mutex::new(used),
            crl_marks: files.crl_marks.clone(),
        })
    }

    /// Passes a refusal of `certificate` on to the observer, if there is one.
    fn report(&self, certificate: &CertificateDer<'_>, reason: CertificateRefusal) {
        if let Some(observer) = &self.observer {
            observer.refused(certificate, reason);
        }
    }

    /// Reads again the CRL files whose contents changed since they were last taken, and uses
    /// the changes it can take for the handshakes that start from then on.
    ///
    /// Each changed file is taken or refused on its own, so that one CA's bad or replayed CRL
    /// does not hold back the revocations in the other CAs' new CRLs. A changed file is
    /// refused, and its CRLs taken before stay, when it cannot be read or parsed, holds a CRL
    /// in the name of a CA of the bundle without its signature, would leave a CA of the bundle
    /// without a CRL, would replace a CA's current CRL by one past its `nextUpdate` (which
    /// would refuse every certificate of that CA), or by an older CRL of the same series (CA,
    /// key and scope: a lower CRL number, or without numbers an earlier `thisUpdate`). A CRL
    /// that was stale already may stay stale. A refused file is tried again at each call; its
    /// refusal is said once while it fails the same way.
    pub fn reload_if_changed(&self) -> CrlReload {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let in_use = self
            .in_use
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bundle = crls::Bundle {
            path: &self.ca,
            cas: &self.ca_certs,
            roots: &self.roots,
            provider: &self.provider,
        };
        let Some(chosen) =
            crls::choose_changes(&bundle, &files, &in_use, &used, UnixTime::now().as_secs())
        else {
            return CrlReload::default();
        };
        let mut refused = chosen.refused;
        let mut taken = Vec::new();
        if let Some(set) = chosen.set {
            let built = self
                .anchors
                .verifiers(&set.crls, &self.provider)
                .and_then(|verifiers| {
                    self.take_as_used(&set.in_use)?;
                    Ok(verifiers)
                });
            match built {
                Ok(verifiers) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(verifiers);
                    self.stale_marks.replace(&set.in_use);
                    *self.in_use.write().unwrap_or_else(|p| p.into_inner()) = set.in_use;
                    self.reloaded_at_ms.store(epoch_ms(), Ordering::Release);
                    self.generation.fetch_add(1, Ordering::Release);
                    *files = chosen.files;
                    taken = chosen.taken;
                }
                Err(error) => refused.push(error),
            }
        }
        let mut last_failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_empty() {
            *last_failure = None;
        } else {
            let said = refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            if last_failure.as_deref() == Some(said.as_str()) {
                refused.clear();
            } else {
                *last_failure = Some(said);
            }
        }
        CrlReload { taken, refused }
    }

    /// Takes a new set of CRLs as the newest used, and keeps that in the record of CRLs used,
    /// if there is one (a failure to write it refuses the set). The set was checked against
    /// the CRLs used before, when it was chosen.
    fn take_as_used(&self, new: &[CrlInUse]) -> Result<(), TlsError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        crls::refuse_older_than(&used, new)?;
        let after = crls::used_after(&used, new);
        if let Some(marks) = &self.crl_marks {
            crls::write_crl_marks(marks, &after)?;
        }
        *used = after;
        Ok(())
    }

    /// Whether the CRLs were read again less than `span` ago: a connection whose handshake
    /// may have been verified with the CRLs read before cannot take the current generation
    /// for its own.
    pub fn reloaded_within(&self, span: std::time::Duration) -> bool {
        let at = self.reloaded_at_ms.load(Ordering::Acquire);
        at != 0 && epoch_ms().saturating_sub(at) < span.as_millis() as u64
    }

    /// How many times the CRLs were read again since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The latest `nextUpdate` of the CRLs in use at or before `now` (seconds since the
    /// epoch), 0 when none has passed: a chain last verified before it is verified again,
    /// since past it that CRL's CA's certificates are refused. A CRL stale already does not
    /// hide another's going stale later.
    pub fn stale_since(&self, now: u64) -> u64 {
        self.stale_marks.passed(now)
    }

    /// Verifies a connection's certificate chain (end-entity first, as the handshake received
    /// it) again, against the CRLs in use now and at this time: a connection outlives the
    /// handshake that checked it, and its certificate may since have been revoked or have
    /// expired. A refusal here is not reported to the observer, which counts handshakes: the
    /// request it refuses is answered, and a message it carries is audited, by the server.
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.current()
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }

    /// The bundle's CAs, by subject name and fingerprint (see [`issuers`]).
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    /// Whether a connection's chain (end-entity first) leads to a CA of the bundle that
    /// `issuer` names, by subject name or fingerprint (see [`issuers`]). Revocation is not
    /// checked again here.
    pub fn issued_by(&self, issuer: &str, chain: &[CertificateDer<'_>]) -> bool {
        self.issuers.issued(issuer, chain)
    }

    /// The earliest `nextUpdate` of the CRLs in use, in seconds since the epoch; `None` when
    /// none of them has one. Past it, every certificate of that CRL's CA is refused.
    pub fn next_update(&self) -> Option<u64> {
        self.in_use
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(CrlInUse::next_update)
            .min()
    }

    /// The CRLs in use that are past their `nextUpdate`, each said with its file and its CA:
    /// every certificate of that CA is refused until a current CRL replaces it.
    pub fn stale_crls(&self) -> Vec<String> {
        let now = UnixTime::now().as_secs();
        self.in_use
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|crl| crl.stale_at(now))
            .map(|crl| crls::crl_expired(crl).to_string())
            .collect()
    }

    /// The CRL files it reads.
    pub fn crl_files(&self) -> &[PathBuf] {
        &self.crls
    }

    /// The verifiers of client and webhook endpoints' certificates, with the CRLs in use now.
    fn current(&self) -> Arc<Verifiers> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|verified| {
                if made_for_client_authentication(end_entity) {
                    Ok(verified)
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::InvalidPurpose,
                    ))
                }
            })
            .inspect_err(|error| self.report(end_entity, CertificateRefusal::from(error)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .clients()
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|_| self.report(cert, CertificateRefusal::KeyNotProved))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .clients()
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|_| self.report(cert, CertificateRefusal::KeyNotProved))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().clients().supported_verify_schemes()
    }
}

/// Whether a client certificate says it is made for TLS client authentication: an extended key
/// usage that names `clientAuth`, and, if it has a key usage, one that allows digital
/// signatures (with which the client proves it holds the key). rustls's verifier takes a
/// certificate without any extended key usage as good for every purpose, and does not read
/// the key usage; a partner's certificate must say what it is for (RFC 5280, 4.2.1.3 and
/// 4.2.1.12), so that a certificate issued for something else cannot open a session.
fn made_for_client_authentication(end_entity: &CertificateDer<'_>) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return false;
    };
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    let signs = match cert.key_usage() {
        Ok(Some(usage)) => usage.value.digital_signature(),
        Ok(None) => true,
        Err(_) => false,
    };
    client_auth && signs
}

/// Why a handshake refused a client certificate, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateRefusal {
    /// A configured CRL revokes it (or a certificate of its chain).
    Revoked,
    /// Past its validity period.
    Expired,
    /// Before its validity period.
    NotYetValid,
    /// It chains to no CA of the bundle.
    UnknownIssuer,
    /// No configured CRL tells its status, or the CRL that does is past its `nextUpdate`.
    RevocationUnknown,
    /// A signature of its chain does not verify.
    BadSignature,
    /// It is not for client authentication.
    InvalidPurpose,
    /// The client did not prove that it holds the certificate's key.
    KeyNotProved,
    /// Any other reason: a malformed certificate, an unsupported algorithm, an unknown
    /// critical extension.
    Invalid,
}

impl From<&rustls::Error> for CertificateRefusal {
    /// Classifies the error a verification of the certificate and its chain returned.
    fn from(error: &rustls::Error) -> CertificateRefusal {
        let rustls::Error::InvalidCertificate(error) = error else {
            return CertificateRefusal::Invalid;
        };
        match error {
            CertificateError::Revoked => CertificateRefusal::Revoked,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertificateRefusal::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertificateRefusal::NotYetValid
            }
            CertificateError::UnknownIssuer => CertificateRefusal::UnknownIssuer,
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                CertificateRefusal::RevocationUnknown
            }
            CertificateError::BadSignature => CertificateRefusal::BadSignature,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                CertificateRefusal::InvalidPurpose
            }
            _ => CertificateRefusal::Invalid,
        }
    }
}

impl CertificateRefusal {
    /// Every reason, in the order of their codes' documentation.
    pub const ALL: [CertificateRefusal; 9] = [
        CertificateRefusal::Revoked,
        CertificateRefusal::Expired,
        CertificateRefusal::NotYetValid,
        CertificateRefusal::UnknownIssuer,
        CertificateRefusal::RevocationUnknown,
        CertificateRefusal::BadSignature,
        CertificateRefusal::InvalidPurpose,
        CertificateRefusal::KeyNotProved,
        CertificateRefusal::Invalid,
    ];

    /// The reason code the audit trail records: `certificate-revoked`, `certificate-expired`,
    /// and so on.
    pub fn code(self) -> &'static str {
        match self {
            CertificateRefusal::Revoked => "certificate-revoked",
            CertificateRefusal::Expired => "certificate-expired",
            CertificateRefusal::NotYetValid => "certificate-not-yet-valid",
            CertificateRefusal::UnknownIssuer => "certificate-unknown-issuer",
            CertificateRefusal::RevocationUnknown => "certificate-revocation-unknown",
            CertificateRefusal::BadSignature => "certificate-bad-signature",
            CertificateRefusal::InvalidPurpose => "certificate-invalid-purpose",
            CertificateRefusal::KeyNotProved => "certificate-key-not-proved",
            CertificateRefusal::Invalid => "certificate-invalid",
        }
    }
}

/// Told of each client certificate that a handshake refuses (see
/// [`server_config_with_verifier`]). Called on the handshake's thread: it must be quick and
/// must not block. A handshake without any certificate is refused before a verifier sees it,
/// so it is not reported. The certificate is refused before the client has proved that it
/// holds its key: it tells what a client presented, not who the client is.
pub trait CertificateRefusalObserver: Send + Sync {
    /// `certificate` (DER) was refused, for `reason`.
    fn refused(&self, certificate: &CertificateDer<'_>, reason: CertificateRefusal);
}

/// Verifies the server certificates of webhook endpoints against the CA bundle and the CRLs
/// that [`ClientVerifier`] holds, the same ones partners' client certificates are checked
/// against, read again when they change: a webhook server's certificate revoked by its CA is
/// refused as a partner's would be, and a CRL past its `nextUpdate` refuses its CA's servers.
///
/// Written here, rather than taken from rustls, for the same reason as [`ClientVerifier`]:
/// rustls verifiers are immutable, and this one follows the CRLs read again.
///
/// For a recipient bound to its CA (the registry's `issuer`), the endpoint's certificate must
/// also lead to that CA ([`Issuers::issued_server`]): any CA of the bundle can issue a
/// certificate for any host, and one that did so for a partner's endpoint, with the network
/// path to it redirected, would receive that partner's deliveries.
#[derive(Debug)]
pub struct EndpointVerifier {
    verifier: Arc<ClientVerifier>,
    /// The CA the recipient is bound to, by name or fingerprint; `None`: any CA of the bundle.
    issuer: Option<String>,
}

/// A webhook endpoint's certificate that does not lead to the CA its recipient is bound to.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's certificate was not issued by the recipient's CA ({0})")]
struct NotIssuedByRecipientsCa(String);

impl ServerCertVerifier for EndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.verifier.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match &self.issuer {
            Some(issuer)
                if !self.verifier.issuers.issued_server(
                    issuer,
                    end_entity,
                    intermediates,
                    server_name,
                    now,
                ) =>
            {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                        NotIssuedByRecipientsCa(issuer.clone()),
                    ))),
                ))
            }
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .current()
            .endpoints()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .current()
            .endpoints()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier
            .current()
            .endpoints()
            .supported_verify_schemes()
    }
}

/// The client configuration of the gateway's webhook calls: it presents `cert` (with `key`),
/// and verifies endpoints with [`EndpointVerifier`] over `verifier`'s CA bundle and CRLs.
/// Same versions, suites and ALPN as [`client_config`].
pub fn endpoint_client_config(
    cert: &Path,
    key: &Path,
    verifier: Arc<ClientVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let mut config = ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EndpointVerifier {
            verifier,
            issuer: None,
        }))
        .with_client_auth_cert(chain, private_key)
        .map_err(|source| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    // No session resumption, as on the server's side: a resumed handshake does not verify the
    // endpoint's certificate again, so that one revoked since its first call would go on
    // being accepted.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The configuration of [`endpoint_client_config`] (`config`, over `verifier`) for the endpoints
/// of a recipient bound to the CA that `issuer` names: their certificates must lead to it.
pub fn endpoint_client_config_bound_to(
    config: &ClientConfig,
    verifier: Arc<ClientVerifier>,
    issuer: &str,
) -> ClientConfig {
    let mut config = config.clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(EndpointVerifier {
            verifier,
            issuer: Some(issuer.to_owned()),
        }));
    config
}

/// Builds a client configuration that presents `files.cert` and verifies the server against
/// `files.ca`: for the AMQP connection, and for tests and load generators that call the
/// gateway. The webhook calls use [`endpoint_client_config`], whose CRLs follow the server's.
///
/// Same versions, suites and ALPN as [`server_config`]. When `files.crls` is not empty, the
/// server's chain is checked against them with the same policy as client certificates (unknown
/// status and expired CRLs refused); when it is empty, the server's revocation is not checked.
/// The server name to verify is given per connection, when connecting.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let (ca_certs, roots) = load_ca_bundle(&files.ca)?;
    let roots = Arc::new(roots);
    let crls = if files.crls.is_empty() {
        // No revocation checking at all (see above).
        Vec::new()
    } else {
        let bundle = crls::Bundle {
            path: &files.ca,
            cas: &ca_certs,
            roots: &roots,
            provider: &provider,
        };
        crls::load_checked_crls(&bundle, &files.crls)?.1.crls
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .enforce_revocation_expiration()
        .build()
        .map_err(|source| TlsError::Verifier {
            ca: files.ca.clone(),
            source,
        })?;
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Protocol)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    // No session resumption, as for webhook calls: a caller that keeps this configuration
    // across connections (the command line's HTTPS client, say) verifies the server's
    // certificate again at each one. (The broker's connections are each given a configuration
    // of their own, which could not resume anyway.)
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Checks that the gateway's own certificate (the first of the chain in `path`) is within its
/// validity period: the server's, and the client certificate it presents to webhook endpoints
/// and brokers. An expired one would make every peer refuse the gateway, with nothing in the
/// gateway's log to say why.
pub fn check_own_certificate(path: &Path) -> Result<(), TlsError> {
    let chain = load_certs(path)?;
    let Some(Ok((_, cert))) = chain
        .first()
        .map(|cert| x509_parser::parse_x509_certificate(cert.as_ref()))
    else {
        // Refused, with its reason, when the configuration is built.
        return Ok(());
    };
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(TlsError::OwnCertificateOutOfDate {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok(())
}

/// Whether the CA bundle at `path` holds the development CA of `passerelle certs dev` (a
/// certificate whose subject is [`dev::DEV_CA_NAME`]). `false` when it cannot be read (the
/// configuration's own checks refuse it then).
pub fn bundle_holds_development_ca(path: &Path) -> bool {
    let Ok(bundle) = load_certs(path) else {
        return false;
    };
    bundle.iter().any(|cert| {
        x509_parser::parse_x509_certificate(cert.as_ref())
            .is_ok_and(|(_, cert)| names_development_ca(cert.subject()))
    })
}

/// Whether a certificate name's common name is the development CA's ([`dev::DEV_CA_NAME`]).
fn names_development_ca(name: &x509_parser::x509::X509Name<'_>) -> bool {
    name.iter_common_name()
        .any(|name| name.as_str().is_ok_and(|name| name == dev::DEV_CA_NAME))
}

/// Whether the first certificate in `path` was issued by the development CA of
/// `passerelle certs dev` ([`dev::DEV_CA_NAME`]). `false` when it cannot be read (the
/// configuration's own checks refuse it then).
pub fn issued_by_development_ca(path: &Path) -> bool {
    let Ok(chain) = load_certs(path) else {
        return false;
    };
    chain
        .first()
        .and_then(|cert| x509_parser::parse_x509_certificate(cert.as_ref()).ok())
        .is_some_and(|(_, cert)| names_development_ca(cert.issuer()))
}

/// The `notAfter` of each certificate of a chain, in seconds since the epoch (an intermediate
/// may expire before the end-entity certificate); `i64::MIN` for one that cannot be read.
pub fn chain_not_afters(chain: &[CertificateDer<'_>]) -> Vec<i64> {
    chain
        .iter()
        .map(|cert| {
            x509_parser::parse_x509_certificate(cert.as_ref())
                .map_or(i64::MIN, |(_, cert)| cert.validity().not_after.timestamp())
        })
        .collect()
}

/// When a chain verified at `now` is to be verified again for the end of a certificate's
/// validity: the first second past the first `notAfter` still to come (a certificate is valid
/// through its `notAfter` second). A certificate already expired at `now` (one a client sent
/// beside the path it was verified by, say) is not waited for; `i64::MAX` when none is to
/// come, and `now` (at every request) when a certificate could not be read.
pub fn next_expiry(not_afters: &[i64], now: i64) -> i64 {
    if not_afters.contains(&i64::MIN) {
        return now;
    }
    not_afters
        .iter()
        .copied()
        .filter(|at| *at >= now)
        .min()
        .map_or(i64::MAX, |at| at.saturating_add(1))
}

/// The identity read from a peer's end-entity certificate.
///
/// It is meaningful only for a certificate that the handshake verified: read it from the
/// connection's peer certificates once the handshake is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Every URI subject alternative name, in certificate order (for example
    /// `urn:partner:ma.interieur`). Empty when the certificate has none.
    pub uris: Vec<String>,
    /// The SHA-256 fingerprint of the DER certificate, `sha256:` then 64 lower-case hex digits.
    pub fingerprint: String,
}

impl PeerIdentity {
    /// The partner ids named by `urn:partner:<id>` URIs, in certificate order. Whether a
    /// certificate naming no partner, or several, is acceptable is the registry's decision.
    pub fn partner_ids(&self) -> impl Iterator<Item = &str> {
        self.uris
            .iter()
            .filter_map(|uri| uri.strip_prefix(PARTNER_URI_PREFIX))
    }
}

/// Reads the identity of a peer from its certificate chain, end-entity certificate first, as
/// rustls gives it after the handshake (`peer_certificates()`).
///
/// Only the end-entity certificate is read. The subject's common name is ignored.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<PeerIdentity, TlsError> {
    let end_entity = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|error| TlsError::PeerCertificate(error.to_string()))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|error| TlsError::PeerCertificate(error.to_string()))?;
    let uris = names
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(PeerIdentity {
        uris,
        fingerprint: fingerprint(end_entity),
    })
}

/// The SHA-256 fingerprint of a DER certificate: `sha256:` then 64 lower-case hex digits, the form
/// the registry uses for pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!(
        "{FINGERPRINT_PREFIX}{}",
        hex::encode(Sha256::digest(cert.as_ref()))
    )
}

/// Loads a PEM certificate chain. Fails when the file holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "certificate";
    every_pem_block(WHAT, path, &read(WHAT, path)?)
}

/// Every PEM block of type `T` in `bytes` (read from `path`); an error names `what` and the
/// file, and so does a file that holds none.
fn every_pem_block<T: PemObject>(
    what: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<T>, TlsError> {
    let blocks = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(what, path, source))?;
    if blocks.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(blocks)
}

/// Loads a PEM private key (the first one in the file: PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    let bytes = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| pem_error(WHAT, path, source))
}

/// Loads a PEM CA bundle into a root store. Fails when the file holds no certificate, or when
/// one of them is not a usable trust anchor.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    load_ca_bundle(path).map(|(_, roots)| roots)
}

/// Reads a PEM CA bundle once: its certificates (which sign the CRLs, see
/// [`signed_by_its_ca`]) and the root store made of them, as [`load_roots`] does.
fn load_ca_bundle(path: &Path) -> Result<(Vec<CertificateDer<'static>>, RootCertStore), TlsError> {
    const WHAT: &str = "CA bundle";
    let certs: Vec<CertificateDer<'static>> = every_pem_block(WHAT, path, &read(WHAT, path)?)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.iter().enumerate() {
        add_anchor(&mut roots, cert, path, index)?;
    }
    Ok((certs, roots))
}

/// Adds certificate `index` (from 0) of the CA bundle at `path` to `roots`; an error names the
/// bundle and the certificate's position in it.
fn add_anchor(
    roots: &mut RootCertStore,
    cert: &CertificateDer<'static>,
    path: &Path,
    index: usize,
) -> Result<(), TlsError> {
    roots
        .add(cert.clone())
        .map_err(|source| TlsError::TrustAnchor {
            path: path.to_owned(),
            index: index + 1,
            source,
        })
}

/// For a relative path, the folder it is read from, said; nothing for an absolute one.
fn working_folder_of(path: &Path) -> String {
    match std::env::current_dir() {
        Ok(here) if path.is_relative() => {
            format!(" (read from the working folder, {})", here.display())
        }
        _ => String::new(),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, source: pem::Error) -> TlsError {
    match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: pem_detail(&source),
        },
    }
}

/// A PEM error in words: the library's own message prints the marker lines it names as lists
/// of byte values.
fn pem_detail(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no end line (-----END {}-----): the file is cut short, or was \
             pasted in part",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "a line that begins a section is malformed: {:?}",
            String::from_utf8_lossy(line)
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_verified_again_when_its_next_certificate_expires() {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, date_time_ymd,
        };
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_after = date_time_ymd(2028, 1, 1);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::default();
        leaf.not_after = date_time_ymd(2030, 1, 1);
        let leaf = leaf.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
        let chain = [leaf.der().clone(), ca.der().clone()];
        let ca_ends = date_time_ymd(2028, 1, 1).unix_timestamp();
        let leaf_ends = date_time_ymd(2030, 1, 1).unix_timestamp();
        let not_afters = chain_not_afters(&chain);
        assert_eq!(not_afters, [leaf_ends, ca_ends]);
        let now = date_time_ymd(2027, 1, 1).unix_timestamp();
        // Verified again the second after the CA's last one: it is valid through that second.
        assert_eq!(next_expiry(&not_afters, now), ca_ends + 1);
        assert_eq!(next_expiry(&not_afters, ca_ends), ca_ends + 1);
        // Past the CA's end (a certificate sent beside the path verified), the leaf's.
        assert_eq!(next_expiry(&not_afters, ca_ends + 1), leaf_ends + 1);
        assert_eq!(next_expiry(&not_afters, leaf_ends + 1), i64::MAX);
        // A certificate that cannot be read: verified again at every request.
        let unreadable = chain_not_afters(&[CertificateDer::from(vec![1, 2, 3])]);
        assert_eq!(unreadable, [i64::MIN]);
        assert_eq!(next_expiry(&unreadable, now), now);
    }

    #[test]
    fn a_pem_file_cut_short_is_said_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cut.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n").unwrap();
        let refused = load_key(&key).unwrap_err().to_string();
        assert!(
            refused.contains("no end line (-----END PRIVATE KEY-----)")
                && refused.contains("cut.key"),
            "{refused}"
        );
    }

    #[test]
    fn the_provider_offers_only_ecdhe_aead_suites() {
        let provider = crypto_provider();
        assert_eq!(provider.cipher_suites.len(), 9);
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.ends_with("_GCM_SHA256")
                    || name.ends_with("_GCM_SHA384")
                    || name.ends_with("_CHACHA20_POLY1305_SHA256"),
                "{name} is not an AEAD suite"
            );
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name} has no ephemeral key exchange"
            );
        }
    }

    #[test]
    fn no_certificate_is_the_peers_fault() {
        let error = peer_identity(&[]).unwrap_err();
        assert!(matches!(error, TlsError::NoPeerCertificate));
        assert!(error.is_peer_fault());
    }

    #[test]
    fn garbage_is_refused_as_the_peers_fault() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        let error = peer_identity(&[garbage]).unwrap_err();
        assert!(matches!(error, TlsError::PeerCertificate(_)), "{error}");
        assert!(error.is_peer_fault());
    }

    #[test]
    fn partner_ids_come_from_partner_uris_only() {
        let identity = PeerIdentity {
            uris: vec![
                "urn:gateway:passerelle".to_owned(),
                "urn:partner:iom.sn".to_owned(),
                "https://example.org/urn:partner:x".to_owned(),
            ],
            fingerprint: format!("{FINGERPRINT_PREFIX}{}", "0".repeat(64)),
        };
        assert_eq!(identity.partner_ids().collect::<Vec<_>>(), ["iom.sn"]);
    }

    #[test]
    fn the_development_ca_is_recognised() {
        let dev = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev");
        assert!(issued_by_development_ca(&dev.join("server.pem")));
        assert!(issued_by_development_ca(&dev.join("gateway-client.pem")));
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Another CA");
        std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
        assert!(!issued_by_development_ca(&other));
        assert!(!issued_by_development_ca(&dir.path().join("missing.pem")));
    }
}
