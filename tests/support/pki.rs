//! Revocation lists of the committed development PKI (`certs/dev`), made on the fly by tests
//! that revoke a certificate.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/pki.rs"]
//! mod pki;
//! ```
#![allow(dead_code)] // each test file uses the part of the harness it needs

use rcgen::{CertificateRevocationListParams, Issuer, KeyPair, SerialNumber, date_time_ymd};
use std::path::PathBuf;

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
    crl_signed_with(ca_key, number, revoked)
}

/// A CRL in the development CA's name, as [`dev_crl`], but signed with another key: the CRL of
/// another CA of the same name.
pub fn impostor_crl(number: u8, revoked: &[&str]) -> String {
    crl_signed_with(KeyPair::generate().unwrap(), number, revoked)
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

fn crl_signed_with(ca_key: KeyPair, number: u8, revoked: &[&str]) -> String {
    let ca_pem = std::fs::read_to_string(dev_dir().join("ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    CertificateRevocationListParams {
        this_update: date_time_ymd(2021, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
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
