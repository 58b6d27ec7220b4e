//! Which CA of the bundle issued a certificate chain.
//!
//! The handshake accepts a client certificate that chains to any CA of the bundle. When the
//! bundle holds the CAs of several institutions, that is not enough to trust the identity the
//! certificate names: any of those CAs can issue a certificate naming another institution's
//! partner (`urn:partner:ma.interieur`), or the auditor. A registry entry therefore names the CA
//! that issues its partner's certificates (its `issuer`), and the certificate must chain to that
//! CA itself. [`Issuers`] answers that question, by the CAs' subject names.
//!
//! A chain is checked by building its path again with a verifier that trusts the named CA alone:
//! the chain may hold intermediates, and one of them could carry the named CA's name while
//! another CA signed it. Revocation, expiry and the certificate's purpose are the handshake's
//! checks ([`super::ClientVerifier`]); this module does not repeat the revocation check.
//!
//! It must not decide which CA a partner's entry names: that is the registry's.

use super::TlsError;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The CAs of a bundle by subject name, each with a verifier that trusts it alone.
///
/// Two certificates of the same name (a CA re-keyed, both keys still in the bundle) are one
/// issuer: they are the same institution.
#[derive(Clone)]
pub struct Issuers {
    by_subject: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_subject.keys()).finish()
    }
}

impl Issuers {
    /// The issuers of the CA bundle's certificates `ca_certs`, read from `ca`.
    pub fn new(
        ca: &Path,
        ca_certs: &[CertificateDer<'static>],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut grouped: BTreeMap<String, RootCertStore> = BTreeMap::new();
        for (index, cert) in ca_certs.iter().enumerate() {
            let subject = subject_name(cert).ok_or_else(|| TlsError::UnreadableCa {
                path: ca.to_owned(),
                index: index + 1,
            })?;
            grouped
                .entry(subject)
                .or_insert_with(RootCertStore::empty)
                .add(cert.clone())
                .map_err(|source| TlsError::TrustAnchor {
                    path: ca.to_owned(),
                    index: index + 1,
                    source,
                })?;
        }
        let mut by_subject = BTreeMap::new();
        for (subject, roots) in grouped {
            // No CRLs: without them, rustls's verifier checks the path, the validity period and
            // the purpose, not the revocation, which the handshake checked.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        ca: ca.to_owned(),
                        source,
                    })?;
            by_subject.insert(subject, verifier);
        }
        Ok(Issuers { by_subject })
    }

    /// The subject names of the bundle's CAs, as [`subject_name`] writes them.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.by_subject.keys().map(String::as_str)
    }

    /// Whether `chain` (end-entity first, as the handshake received it) leads to a CA of the
    /// bundle named `subject`. False for a name the bundle does not hold.
    pub fn issued(&self, subject: &str, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.by_subject.get(subject).is_some_and(|verifier| {
            verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok()
        })
    }
}

/// A certificate's subject name as people read it (RFC 4514 style, for example
/// `CN=Passerelle development CA, O=Passerelle (development only)`): the form the registry's
/// `issuer` takes, and `passerelle certs identity` prints. `None` when the certificate cannot be
/// parsed.
pub fn subject_name(cert: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.subject().to_string())
}

/// A certificate's issuer name, in the form of [`subject_name`].
pub fn issuer_name(cert: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.issuer().to_string())
}
