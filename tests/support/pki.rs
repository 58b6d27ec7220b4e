//! Revocation lists of the committed development PKI (`certs/dev`), made on the fly by tests
//! that revoke a certificate, and other CAs made on the fly.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/pki.rs"]
//! mod pki;
//! ```
#![allow(dead_code)] // each test file uses the part of the harness it needs

use passerelle::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    date_time_ymd,
};
use std::path::{Path, PathBuf};

/// The committed development PKI.
fn dev_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs/dev")
}

/// The serial number of a certificate file of the development PKI.
pub fn serial_of(name: &str) -> SerialNumber {
    let pem = std::fs::read(dev_dir().join(format!("{name}.pem"))).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    SerialNumber::from_slice(cert.raw_serial())
}

/// A CRL of the development CA, valid now, revoking the given certificates.
pub fn dev_crl(number: u8, revoked: &[&str]) -> String {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dev_dir().join("ca.key")).unwrap()).unwrap();
    crl_signed_with(ca_key, number, revoked, date_time_ymd(2099, 1, 1))
}

/// A CRL of the development CA, as [`dev_crl`], current until `next_update` only.
pub fn dev_crl_until(number: u8, revoked: &[&str], next_update: time::OffsetDateTime) -> String {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dev_dir().join("ca.key")).unwrap()).unwrap();
    crl_signed_with(ca_key, number, revoked, next_update)
}

/// A CRL in the development CA's name, as [`dev_crl`], but signed with another key: the CRL of
/// another CA of the same name.
pub fn impostor_crl(number: u8, revoked: &[&str]) -> String {
    crl_signed_with(
        KeyPair::generate().unwrap(),
        number,
        revoked,
        date_time_ymd(2099, 1, 1),
    )
}

/// A CRL of another CA, named `name`, that the development bundle does not hold (an
/// intermediate CA's, say), revoking nothing.
pub fn crl_of_another_ca(name: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    empty_crl_of(&Issuer::new(params, key)).pem().unwrap()
}

/// A CRL of `issuer`, revoking nothing, current until 2099.
pub fn empty_crl_of(issuer: &Issuer<'_, KeyPair>) -> rcgen::CertificateRevocationList {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
}

fn crl_signed_with(
    ca_key: KeyPair,
    number: u8,
    revoked: &[&str],
    next_update: time::OffsetDateTime,
) -> String {
    let ca_pem = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 1),
        next_update,
        crl_number: SerialNumber::from_slice(&[number]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|name| rcgen::RevokedCertParams {
                serial_number: serial_of(name),
                revocation_time: date_time_ymd(2021, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A CA made on the fly.
pub struct OtherCa {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its name and key, to issue with.
    pub issuer: Issuer<'static, KeyPair>,
    /// Issued by the development CA, whose bundle clients are checked against.
    intermediate: bool,
}

/// The development CA, to issue certificates and CRLs with.
pub fn dev_ca_issuer() -> Issuer<'static, KeyPair> {
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dev_dir().join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap()
}

impl OtherCa {
    /// A CA named `common_name`, in the development CA's organisation.
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = Self::params(common_name);
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Self {
            cert_pem,
            issuer: Issuer::new(params, key),
            intermediate: false,
        }
    }

    /// An intermediate CA named `common_name`, issued by the development CA: the chains of the
    /// certificates it issues go through it to the development CA.
    pub fn intermediate(common_name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = Self::params(common_name);
        let cert_pem = params.signed_by(&key, &dev_ca_issuer()).unwrap().pem();
        Self {
            cert_pem,
            issuer: Issuer::new(params, key),
            intermediate: true,
        }
    }

    /// An intermediate CA named `common_name`, issued by `parent`.
    pub fn intermediate_under(common_name: &str, parent: &OtherCa) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = Self::params(common_name);
        let cert_pem = params.signed_by(&key, &parent.issuer).unwrap().pem();
        Self {
            cert_pem,
            issuer: Issuer::new(params, key),
            intermediate: true,
        }
    }

    fn params(common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Passerelle (development only)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        params
    }

    /// This CA's CRL, revoking nothing, current until 2099, in DER.
    pub fn crl(&self) -> Vec<u8> {
        empty_crl_of(&self.issuer).der().to_vec()
    }

    /// This CA's CRL, revoking nothing, current until `next_update` only.
    pub fn crl_until(&self, next_update: time::OffsetDateTime) -> Vec<u8> {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2021, 1, 1),
            next_update,
            crl_number: SerialNumber::from_slice(&[2]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    /// Issues a certificate with `params` and writes it (followed by this CA's certificate, for
    /// an intermediate) and its key into `dir`, as `<file>.pem` and `<file>.key`.
    fn issue(&self, dir: &Path, file: &str, mut params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = if self.intermediate {
            format!("{}{}", cert.pem(), self.cert_pem)
        } else {
            cert.pem()
        };
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, chain).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// Issues a server certificate for `localhost` into `dir` (see [`OtherCa::issue`]), with the
    /// development CA bundle and CRL, which verify the clients it serves (the gateway's webhook
    /// calls).
    pub fn server_files(&self, dir: &Path) -> TlsFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (cert, key) = self.issue(dir, "other-server", params);
        TlsFiles::new(dev_dir().join("ca.pem"), cert, key).with_crl(dev_dir().join("crl.pem"))
    }

    /// Issues a client certificate for `uri` into `dir` (see [`OtherCa::issue`]), with the dev
    /// CA bundle (to trust the gateway).
    pub fn client_files(&self, dir: &Path, uri: &str) -> TlsFiles {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = self.issue(dir, "other", params);
        TlsFiles::new(dev_dir().join("ca.pem"), cert, key)
    }
}
