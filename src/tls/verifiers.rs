//! The rustls verifiers that the CA bundle and one set of CRLs make: of partners' client
//! certificates, and of webhook endpoints' server certificates.
//!
//! rustls's verifier checks a certificate against the first CRL in its issuer's name that it
//! is given, and refuses the certificate when that CRL is not signed by the issuer's key. A CA
//! re-keyed under the same name, both keys still in the bundle, has a CRL of each key: given
//! both, the verifier would refuse the certificates of whichever key's CRL came second. So the
//! bundle's CAs are put in groups in which no two share a name, and each group has verifiers of
//! its own, given, of the CRLs in the name of one of its CAs, only those that CA signed. A
//! certificate is accepted when one group's verifier accepts it. A bundle whose CAs all have
//! different names is one group, verified as rustls verifies it.

use super::crls::signed_by_its_ca;
use super::{TlsError, add_anchor};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerified;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The CA bundle's certificates in groups in which no two share a name.
pub(super) struct AnchorGroups {
    /// The bundle's file.
    path: PathBuf,
    groups: Vec<AnchorGroup>,
}

/// A CA's name (DER); `None` when its certificate cannot be read, which shares no name.
type Name = Option<Vec<u8>>;

/// CAs of the bundle of different names, and their trust anchors.
struct AnchorGroup {
    roots: Arc<RootCertStore>,
    cas: Vec<CertificateDer<'static>>,
}

impl AnchorGroups {
    /// Groups the CAs of the bundle read from `path`: each CA joins the first group that has
    /// no CA of its name, in the bundle's order.
    pub(super) fn new(path: &Path, cas: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        let subject = |cert: &CertificateDer<'_>| {
            x509_parser::parse_x509_certificate(cert.as_ref())
                .map(|(_, parsed)| parsed.subject().as_raw().to_vec())
                .ok()
        };
        // Each group's names, and the places in the bundle of its CAs.
        let mut groups: Vec<(Vec<Name>, Vec<usize>)> = Vec::new();
        for (index, cert) in cas.iter().enumerate() {
            let name = subject(cert);
            match groups
                .iter_mut()
                .find(|(names, _)| name.is_none() || !names.contains(&name))
            {
                Some((names, members)) => {
                    names.push(name);
                    members.push(index);
                }
                None => groups.push((vec![name], vec![index])),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(_, members)| {
                let mut roots = RootCertStore::empty();
                for index in &members {
                    add_anchor(&mut roots, &cas[*index], path, *index)?;
                }
                Ok(AnchorGroup {
                    roots: Arc::new(roots),
                    cas: members.iter().map(|index| cas[*index].clone()).collect(),
                })
            })
            .collect::<Result<_, TlsError>>()?;
        Ok(AnchorGroups {
            path: path.to_owned(),
            groups,
        })
    }

    /// The verifiers of each group with `crls`, which refuse a certificate whose revocation
    /// status a CRL cannot tell, and one checked against a CRL past its `nextUpdate`.
    pub(super) fn verifiers(
        &self,
        crls: &[CertificateRevocationListDer<'static>],
        provider: &Arc<CryptoProvider>,
    ) -> Result<Verifiers, TlsError> {
        let refused = |source| TlsError::Verifier {
            ca: self.path.clone(),
            source,
        };
        let mut pairs = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let crls = group.crls_of(crls);
            let clients =
                WebPkiClientVerifier::builder_with_provider(group.roots.clone(), provider.clone())
                    .with_crls(crls.clone())
                    .enforce_revocation_expiration()
                    .build()
                    .map_err(refused)?;
            let endpoints =
                WebPkiServerVerifier::builder_with_provider(group.roots.clone(), provider.clone())
                    .with_crls(crls)
                    .enforce_revocation_expiration()
                    .build()
                    .map_err(refused)?;
            pairs.push(Pair { clients, endpoints });
        }
        Ok(Verifiers(pairs))
    }
}

impl AnchorGroup {
    /// The CRLs of `crls` this group's verifiers are given: all but those in the name of one of
    /// its CAs that this CA did not sign (another key's, of a CA re-keyed under the same name).
    fn crls_of(
        &self,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Vec<CertificateRevocationListDer<'static>> {
        // The group holds one CA of each name: a CRL in its name is kept when that CA signed it.
        crls.iter()
            .filter(|crl| signed_by_its_ca(crl, &self.cas).is_ok())
            .cloned()
            .collect()
    }
}

/// The verifiers of each group of the bundle's CAs, with one set of CRLs.
#[derive(Clone)]
pub(super) struct Verifiers(Vec<Pair>);

/// One group's verifiers.
#[derive(Clone)]
struct Pair {
    clients: Arc<dyn ClientCertVerifier>,
    endpoints: Arc<WebPkiServerVerifier>,
}

impl Verifiers {
    /// Verifies a client's certificate chain: accepted when a group's verifier accepts it.
    pub(super) fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        first_accepted(self.0.iter().map(|pair| {
            pair.clients
                .verify_client_cert(end_entity, intermediates, now)
        }))
    }

    /// Verifies a server's certificate chain for `server_name`: accepted when a group's
    /// verifier accepts it.
    pub(super) fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        first_accepted(self.0.iter().map(|pair| {
            pair.endpoints.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        }))
    }

    /// A verifier of client certificates, for what does not depend on the CAs: handshake
    /// signatures and the schemes supported.
    pub(super) fn clients(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.0[0].clients
    }

    /// A verifier of server certificates, for what does not depend on the CAs.
    pub(super) fn endpoints(&self) -> &Arc<WebPkiServerVerifier> {
        &self.0[0].endpoints
    }
}

/// The first acceptance among the answers of several groups' verifiers, asked in turn; when
/// none accepts, the refusal that says most: one that is not merely a chain that does not
/// lead to the group's CAs (unknown issuer, or a signature that is not their keys', or made
/// with an algorithm their keys do not have).
fn first_accepted<T>(
    answers: impl Iterator<Item = Result<T, rustls::Error>>,
) -> Result<T, rustls::Error> {
    let says_little = |error: &rustls::Error| {
        matches!(
            error,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
                    | CertificateError::BadSignature
                    | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
                    | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
            )
        )
    };
    let mut refusal: Option<rustls::Error> = None;
    for answer in answers {
        match answer {
            Ok(accepted) => return Ok(accepted),
            Err(error) => {
                if refusal
                    .as_ref()
                    .is_none_or(|kept| says_little(kept) && !says_little(&error))
                {
                    refusal = Some(error);
                }
            }
        }
    }
    Err(refusal.unwrap_or(rustls::Error::InvalidCertificate(
        CertificateError::UnknownIssuer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_kept_is_the_one_of_the_group_the_chain_leads_to() {
        let refused =
            |error: CertificateError| Err::<(), _>(rustls::Error::InvalidCertificate(error));
        let other_algorithm = CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
            signature_algorithm_id: vec![1],
            public_key_algorithm_id: vec![2],
        };
        // A group of another key of the same name (another algorithm, or the same one), then
        // the group of the CA that issued the chain, which says why it refuses it.
        for first in [other_algorithm, CertificateError::BadSignature] {
            let answers = [
                refused(CertificateError::UnknownIssuer),
                refused(first),
                refused(CertificateError::Revoked),
            ];
            assert_eq!(
                first_accepted(answers.into_iter()),
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            );
        }
        // An acceptance wins; the first telling refusal is kept before a later one.
        let accepted = [refused(CertificateError::Revoked), Ok(())];
        assert_eq!(first_accepted(accepted.into_iter()), Ok(()));
        let two = [
            refused(CertificateError::Revoked),
            refused(CertificateError::Expired),
        ];
        assert_eq!(
            first_accepted(two.into_iter()),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        );
    }
}
