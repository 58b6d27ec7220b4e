//! The development PKI: a CA, the gateway's certificates, one client certificate per partner,
//! the test certificates (revoked, expired, unknown) and the CRL, generated with rcgen.
//!
//! This module owns the layout of a development PKI folder (see [`files`]) and its generation
//! ([`generate_dev_pki`], behind `passerelle certs dev`). It must never be used to make production
//! certificates: every key it writes is meant to be committed, and so is public.

use super::{PARTNER_URI_PREFIX, TlsFiles, fingerprint};
use crate::durable_folders::{Readers, Staged, stage_file};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber, date_time_ymd,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime, Time};

/// The folder `passerelle certs dev` writes to by default, relative to the crate root.
pub const DEFAULT_DIR: &str = "certs/dev";

/// The file stem of the CA (`ca.pem`, `ca.key`).
pub const CA: &str = "ca";
/// The file stem of the gateway's server certificate, for `localhost`, `127.0.0.1` and `::1`.
pub const SERVER: &str = "server";
/// The file stem of the gateway's client certificate for its outgoing calls
/// (`urn:gateway:passerelle`).
pub const GATEWAY_CLIENT: &str = "gateway-client";
/// The file stem of a client certificate listed in the CRL (`urn:partner:revoked.example`).
pub const REVOKED: &str = "revoked";
/// The file stem of a client certificate that expired in 2020 (`urn:partner:expired.example`).
pub const EXPIRED: &str = "expired";
/// The file stem of a valid client certificate that names no registry partner
/// (`urn:partner:unknown.example`).
pub const UNKNOWN: &str = "unknown";
/// The CRL file name.
pub const CRL_FILE: &str = "crl.pem";
/// The URI subject alternative name of the gateway's client certificate.
pub const GATEWAY_URI: &str = "urn:gateway:passerelle";

/// File stems that a partner id may not take.
const RESERVED: [&str; 7] = [CA, SERVER, GATEWAY_CLIENT, REVOKED, EXPIRED, UNKNOWN, "crl"];
/// How long the CA is valid, in days.
const CA_DAYS: i64 = 20 * 365;
/// How long the other certificates and the CRL are valid, in days.
const LEAF_DAYS: i64 = 10 * 365;

/// The files of the certificate `name` in a development PKI folder: `ca.pem` as the CA bundle,
/// `<name>.pem` and `<name>.key`, and `crl.pem`. For example `files(dir, SERVER)` for the gateway,
/// `files(dir, "iom.sn")` for a partner.
pub fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles::new(
        dir.join(format!("{CA}.pem")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
    .with_crl(dir.join(CRL_FILE))
}

/// Why the development PKI could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevPkiError {
    /// A partner id is not a dotted name of lower-case letters, digits and hyphens.
    #[error(
        "partner id {0:?} is not a dotted name of lower-case letters, digits and hyphens (for example sn.consulat.casablanca)"
    )]
    InvalidPartnerId(String),
    /// A partner id is the file stem of one of the PKI's own certificates.
    #[error("partner id {0:?} is reserved for a certificate of the development PKI")]
    ReservedPartnerId(String),
    /// A partner id is listed twice.
    #[error("partner id {0:?} is listed twice")]
    DuplicatePartnerId(String),
    /// rcgen could not make a key, a certificate or the CRL.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The system's random number generator failed.
    #[error("cannot draw a random serial number: {0}")]
    Random(#[source] getrandom::Error),
    /// A file or the folder could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// One certificate of a generated development PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The file stem: `ca`, `server`, a partner id, `gateway-client`, `revoked`, `expired` or
    /// `unknown`.
    pub name: String,
    /// The subject alternative names, as text (`urn:partner:iom.sn`, or `localhost, 127.0.0.1, ::1`);
    /// empty for the CA.
    pub names: String,
    /// The SHA-256 fingerprint, as the registry pins it.
    pub fingerprint: String,
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// A generated development PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// Every certificate, CA first.
    pub certificates: Vec<IssuedCertificate>,
    /// The CRL file, which revokes the `revoked` certificate.
    pub crl: PathBuf,
}

/// The common name of the development CA. It and what it issues are for development and tests
/// only: the project's own copy, in `certs/dev`, is public.
pub const DEV_CA_NAME: &str = "Passerelle development CA";

/// Generates a fresh development PKI into `out`, creating the folder when needed.
///
/// It writes `ca.pem`/`ca.key` (an ECDSA P-256 CA, valid 20 years, that may sign end-entity
/// certificates only), `server.pem`/`.key` (`localhost`, `127.0.0.1`, `::1`), one
/// `<id>.pem`/`.key` per partner (URI `urn:partner:<id>`, common name `<id>`),
/// `gateway-client.pem`/`.key` (`urn:gateway:passerelle`), `revoked.pem`/`.key`,
/// `expired.pem`/`.key` (valid during 2020 only), `unknown.pem`/`.key`, and `crl.pem`, which revokes
/// `revoked`. Certificates and the CRL are valid 10 years from yesterday. Serial numbers are random.
///
/// Every run makes a new CA and new keys, and overwrites the files of the same names; files of
/// partners no longer listed are left as they are, signed by the old CA. Nothing is written until
/// everything has been generated; each file is replaced atomically.
pub fn generate_dev_pki(out: &Path, partners: &[&str]) -> Result<DevPki, DevPkiError> {
    validate_partner_ids(partners)?;
    let yesterday = OffsetDateTime::now_utc().replace_time(Time::MIDNIGHT) - Duration::days(1);
    let mut pending = Vec::new();
    let mut certificates = Vec::new();

    let ca_key = generate_key(CA)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, DEV_CA_NAME);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "Passerelle (development only)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = yesterday;
    ca_params.not_after = yesterday + Duration::days(CA_DAYS);
    ca_params.serial_number = Some(random_serial()?);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|source| {
        DevPkiError::Generate {
            what: "the CA certificate".to_owned(),
            source,
        }
    })?;
    certificates.push(stage(
        &mut pending,
        out,
        CA,
        String::new(),
        ca.pem(),
        ca.der(),
        ca_key_pem,
    ));

    let current = (yesterday, yesterday + Duration::days(LEAF_DAYS));
    let mut leaves: Vec<Leaf> = vec![Leaf::server(SERVER, current)];
    leaves.extend(
        partners
            .iter()
            .map(|id| Leaf::client(id, partner_uri(id), current)),
    );
    leaves.push(Leaf::client(
        GATEWAY_CLIENT,
        GATEWAY_URI.to_owned(),
        current,
    ));
    leaves.push(Leaf::client(
        REVOKED,
        partner_uri("revoked.example"),
        current,
    ));
    let expired = (date_time_ymd(2020, 1, 1), date_time_ymd(2020, 12, 31));
    leaves.push(Leaf::client(
        EXPIRED,
        partner_uri("expired.example"),
        expired,
    ));
    leaves.push(Leaf::client(
        UNKNOWN,
        partner_uri("unknown.example"),
        current,
    ));

    let mut revoked_serial = None;
    for leaf in leaves {
        let serial = random_serial()?;
        if leaf.name == REVOKED {
            revoked_serial = Some(serial.clone());
        }
        let (params, names) = leaf.params(serial)?;
        let key = generate_key(&leaf.name)?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(|source| DevPkiError::Generate {
                what: format!("the {} certificate", leaf.name),
                source,
            })?;
        certificates.push(stage(
            &mut pending,
            out,
            &leaf.name,
            names,
            cert.pem(),
            cert.der(),
            key.serialize_pem(),
        ));
    }

    let crl = CertificateRevocationListParams {
        this_update: yesterday,
        next_update: yesterday + Duration::days(LEAF_DAYS),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: revoked_serial
            .into_iter()
            .map(|serial_number| RevokedCertParams {
                serial_number,
                revocation_time: yesterday,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl_pem = crl
        .signed_by(&ca)
        .and_then(|crl| crl.pem())
        .map_err(|source| DevPkiError::Generate {
            what: "the CRL".to_owned(),
            source,
        })?;
    let crl_path = out.join(CRL_FILE);
    pending.push(Pending {
        path: crl_path.clone(),
        contents: crl_pem,
        secret: false,
    });

    std::fs::create_dir_all(out).map_err(|source| DevPkiError::Write {
        path: out.to_owned(),
        source,
    })?;
    // Every file is written and synced beside its place, and every place checked, before any
    // is put there: a failure (a full disk, a folder where a file goes) leaves the folder's PKI
    // as it was, rather than new certificates beside an old CA's CRL. What the system refuses
    // only at the rename (an immutable file) is still met midway, and named.
    if let Some(taken) = pending.iter().find(|file| file.path.is_dir()) {
        return Err(DevPkiError::Write {
            path: taken.path.clone(),
            source: io::Error::new(
                io::ErrorKind::IsADirectory,
                "a folder is in the file's place",
            ),
        });
    }
    let staged = pending
        .iter()
        .map(Pending::stage)
        .collect::<Result<Vec<_>, _>>()?;
    for (file, staged) in pending.iter().zip(staged) {
        staged.replace().map_err(|source| DevPkiError::Write {
            path: file.path.clone(),
            source,
        })?;
    }
    Ok(DevPki {
        certificates,
        crl: crl_path,
    })
}

/// Checks that every partner id is a dotted name that makes a safe, unique file stem.
fn validate_partner_ids(partners: &[&str]) -> Result<(), DevPkiError> {
    let mut seen = std::collections::BTreeSet::new();
    for &id in partners {
        if !crate::registry::is_well_formed_partner_id(id) {
            return Err(DevPkiError::InvalidPartnerId(id.to_owned()));
        }
        if RESERVED.contains(&id) {
            return Err(DevPkiError::ReservedPartnerId(id.to_owned()));
        }
        if !seen.insert(id) {
            return Err(DevPkiError::DuplicatePartnerId(id.to_owned()));
        }
    }
    Ok(())
}

/// What a leaf certificate is for.
enum Purpose {
    Server,
    Client { uri: String },
}

/// An end-entity certificate to issue.
struct Leaf {
    name: String,
    purpose: Purpose,
    validity: (OffsetDateTime, OffsetDateTime),
}

impl Leaf {
    fn server(name: &str, validity: (OffsetDateTime, OffsetDateTime)) -> Self {
        Self {
            name: name.to_owned(),
            purpose: Purpose::Server,
            validity,
        }
    }

    fn client(name: &str, uri: String, validity: (OffsetDateTime, OffsetDateTime)) -> Self {
        Self {
            name: name.to_owned(),
            purpose: Purpose::Client { uri },
            validity,
        }
    }

    /// The certificate parameters, and the subject alternative names as text.
    fn params(&self, serial: SerialNumber) -> Result<(CertificateParams, String), DevPkiError> {
        let invalid = |source| DevPkiError::Generate {
            what: format!("the names of the {} certificate", self.name),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial);
        params.not_before = self.validity.0;
        params.not_after = self.validity.1;
        let names = match &self.purpose {
            Purpose::Server => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, "localhost");
                params.subject_alt_names = vec![
                    SanType::DnsName(Ia5String::try_from("localhost").map_err(invalid)?),
                    SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                "localhost, 127.0.0.1, ::1".to_owned()
            }
            Purpose::Client { uri } => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, self.name.as_str());
                params.subject_alt_names = vec![SanType::URI(
                    Ia5String::try_from(uri.as_str()).map_err(invalid)?,
                )];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                uri.clone()
            }
        };
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Passerelle (development only)");
        Ok((params, names))
    }
}

/// A file to write once everything is generated.
struct Pending {
    path: PathBuf,
    contents: String,
    secret: bool,
}

impl Pending {
    /// Writes the file whole beside its place (see [`crate::durable_folders::stage_file`]).
    /// Key files are readable by their owner only.
    fn stage(&self) -> Result<Staged, DevPkiError> {
        let readers = if self.secret {
            Readers::Owner
        } else {
            Readers::AsTheUmaskSays
        };
        stage_file(&self.path, self.contents.as_bytes(), readers).map_err(|source| {
            DevPkiError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// Queues a certificate and its key for writing, and describes it.
fn stage(
    pending: &mut Vec<Pending>,
    out: &Path,
    name: &str,
    names: String,
    cert_pem: String,
    cert_der: &rustls::pki_types::CertificateDer<'_>,
    key_pem: String,
) -> IssuedCertificate {
    let cert = out.join(format!("{name}.pem"));
    let key = out.join(format!("{name}.key"));
    pending.push(Pending {
        path: cert.clone(),
        contents: cert_pem,
        secret: false,
    });
    pending.push(Pending {
        path: key.clone(),
        contents: key_pem,
        secret: true,
    });
    IssuedCertificate {
        name: name.to_owned(),
        names,
        fingerprint: fingerprint(cert_der),
        cert,
        key,
    }
}

fn generate_key(name: &str) -> Result<KeyPair, DevPkiError> {
    KeyPair::generate().map_err(|source| DevPkiError::Generate {
        what: format!("the {name} key"),
        source,
    })
}

/// A random, positive, 16-byte serial number.
fn random_serial() -> Result<SerialNumber, DevPkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(DevPkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn partner_uri(id: &str) -> String {
    format!("{PARTNER_URI_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_ids_must_be_safe_dotted_names() {
        for bad in [
            "",
            "../etc",
            "a/b",
            "Ma.interieur",
            "ma..interieur",
            ".ma",
            "ma.",
            "-ma",
            "ma.-x",
            "ma interieur",
        ] {
            assert!(
                matches!(
                    validate_partner_ids(&[bad]),
                    Err(DevPkiError::InvalidPartnerId(_))
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(validate_partner_ids(&["ma.interieur", "iom.sn", "audit.igat"]).is_ok());
        assert!(validate_partner_ids(&["iom.gn-2", "x"]).is_ok());
    }

    #[test]
    fn reserved_and_duplicate_ids_are_refused() {
        assert!(matches!(
            validate_partner_ids(&["server"]),
            Err(DevPkiError::ReservedPartnerId(_))
        ));
        assert!(matches!(
            validate_partner_ids(&["crl"]),
            Err(DevPkiError::ReservedPartnerId(_))
        ));
        assert!(matches!(
            validate_partner_ids(&["iom.sn", "iom.sn"]),
            Err(DevPkiError::DuplicatePartnerId(_))
        ));
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
