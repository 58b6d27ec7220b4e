//! Which CA of the bundle issued a certificate chain.
//!
//! The handshake accepts a client certificate that chains to any CA of the bundle. When the
//! bundle holds the CAs of several institutions, that is not enough to trust the identity the
//! certificate names: any of those CAs can issue a certificate naming another institution's
//! partner (`urn:partner:ma.interieur`), or the auditor. A registry entry therefore names the CA
//! that issues its partner's certificates (its `issuer`), and the certificate must chain to that
//! CA itself. [`Issuers`] answers that question, by the CAs' subject names or fingerprints.
//!
//! A chain is checked by building its path again with a verifier that trusts the named CA alone:
//! the chain may hold intermediates, and one of them could carry the named CA's name while
//! another CA signed it. Revocation, expiry and the certificate's purpose are the handshake's
//! checks ([`super::ClientVerifier`]); this module does not repeat the revocation check. The
//! same question is asked of a bound partner's webhook endpoint ([`Issuers::issued_server`]):
//! another CA of the bundle cannot issue a certificate for its host and receive its deliveries.
//!
//! It must not decide which CA a partner's entry names: that is the registry's.

use super::TlsError;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The CAs of a bundle, each with a verifier that trusts it alone: by subject name, and by the
/// SHA-256 fingerprint of its certificate.
///
/// Certificates of the same name (a CA re-keyed, both keys still in the bundle) are one issuer
/// by that name, which accepts any of them; each is one issuer by its fingerprint, which
/// accepts it alone. A printed name that stands for two different names (the printed form does
/// not escape their characters, and an unreadable name prints as an error) names no issuer: it
/// is [`Issuers::ambiguous`], and such CAs are named by fingerprint.
#[derive(Clone)]
pub struct Issuers {
    by_name: BTreeMap<String, IssuerVerifiers>,
    /// Each CA of the bundle: its printed subject name and its fingerprint, in bundle order.
    cas: Vec<(String, String)>,
    /// Printed names that stand for more than one name.
    ambiguous: BTreeSet<String>,
}

/// The verifiers that trust one issuer alone: of client certificates (a partner's) and of
/// server certificates (a partner's webhook endpoint's).
#[derive(Clone)]
struct IssuerVerifiers {
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.cas).finish()
    }
}

impl Issuers {
    /// The issuers of the CA bundle's certificates `ca_certs`, read from `ca`.
    pub fn new(
        ca: &Path,
        ca_certs: &[CertificateDer<'static>],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        // Printed name -> (the raw names printed so, the certificates).
        let mut by_printed: BTreeMap<String, (BTreeSet<Vec<u8>>, RootCertStore)> = BTreeMap::new();
        let mut by_fingerprint: BTreeMap<String, RootCertStore> = BTreeMap::new();
        let mut cas = Vec::new();
        for (index, cert) in ca_certs.iter().enumerate() {
            let (printed, raw) = names_of(cert).ok_or_else(|| TlsError::UnreadableCa {
                path: ca.to_owned(),
                index: index + 1,
            })?;
            let anchor = |roots: &mut RootCertStore| super::add_anchor(roots, cert, ca, index);
            let group = by_printed
                .entry(printed.clone())
                .or_insert_with(|| (BTreeSet::new(), RootCertStore::empty()));
            group.0.insert(raw);
            anchor(&mut group.1)?;
            let print = super::fingerprint(cert);
            anchor(
                by_fingerprint
                    .entry(print.clone())
                    .or_insert_with(RootCertStore::empty),
            )?;
            cas.push((printed, print));
        }
        let mut ambiguous = BTreeSet::new();
        let mut by_name = BTreeMap::new();
        let verifier = |roots: RootCertStore| {
            let roots = Arc::new(roots);
            let refused = |source| TlsError::Verifier {
                ca: ca.to_owned(),
                source,
            };
            // No CRLs: without them, rustls's verifiers check the path, the validity period and
            // the purpose, not the revocation, which the handshake checked.
            Ok(IssuerVerifiers {
                clients: WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(refused)?,
                servers: WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(refused)?,
            })
        };
        for (printed, (raw, roots)) in by_printed {
            if raw.len() > 1 {
                ambiguous.insert(printed);
            } else {
                by_name.insert(printed, verifier(roots)?);
            }
        }
        for (print, roots) in by_fingerprint {
            by_name.insert(print, verifier(roots)?);
        }
        Ok(Issuers {
            by_name,
            cas,
            ambiguous,
        })
    }

    /// The bundle's CAs: each one's subject name, printed as [`issuer_name`] prints names, and the
    /// SHA-256 fingerprint of its certificate (`sha256:<hex>`), in bundle order.
    pub fn cas(&self) -> &[(String, String)] {
        &self.cas
    }

    /// Whether `issuer` names CAs of the bundle: a subject name that stands for one name, or
    /// a fingerprint.
    pub fn names(&self, issuer: &str) -> bool {
        self.by_name.contains_key(issuer)
    }

    /// Whether `issuer` is a printed subject name that stands for several different names
    /// of the bundle's CAs, so that it names none of them.
    pub fn ambiguous(&self, issuer: &str) -> bool {
        self.ambiguous.contains(issuer)
    }

    /// Whether `chain` (end-entity first, as the handshake received it) leads to a CA of the
    /// bundle that `issuer` names (see [`Issuers::names`]). False for a name that names none.
    pub fn issued(&self, issuer: &str, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.by_name.get(issuer).is_some_and(|verifiers| {
            verifiers
                .clients
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok()
        })
    }

    /// Whether a server's certificate (`end_entity`, with the `intermediates` it sent) for
    /// `server_name` leads, at `now`, to a CA of the bundle that `issuer` names: a webhook
    /// endpoint of a partner bound to its CA. False for a name that names none.
    pub fn issued_server(
        &self,
        issuer: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        self.by_name.get(issuer).is_some_and(|verifiers| {
            verifiers
                .servers
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .is_ok()
        })
    }
}

/// A certificate's subject name, printed (as [`issuer_name`] prints names) and raw (DER).
fn names_of(cert: &CertificateDer<'_>) -> Option<(String, Vec<u8>)> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, parsed)| {
            (
                parsed.subject().to_string(),
                parsed.subject().as_raw().to_vec(),
            )
        })
}

/// A certificate's issuer name as people read it, its attributes in the order they are encoded
/// and without escaping (for example `CN=Passerelle development CA, O=Passerelle (development
/// only)`): a form the registry's `issuer` takes, and `passerelle certs identity` prints.
/// `None` when the certificate cannot be parsed.
pub fn issuer_name(cert: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.issuer().to_string())
}
