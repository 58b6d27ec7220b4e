//! Certificate revocation lists: reading and checking a server's CRL files against its CA
//! bundle, telling each CRL's series and age, choosing which changed files a reload takes, and
//! the record of the newest CRL used of each series ([`super::TlsFiles::crl_marks`]).
//!
//! The CRLs a verifier is built with come from here; [`super::ClientVerifier`] holds them and
//! swaps its verifiers when a reload takes a change.

use super::{TlsError, every_pem_block, read};
use crate::durable_folders::Readers;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One CRL of the set in use: whose it is, where it was read, and until when it is current.
#[derive(Debug, Clone)]
pub(super) struct CrlInUse {
    /// The issuer's name (DER).
    issuer: Vec<u8>,
    /// The issuer's name, for people.
    issuer_name: String,
    /// The file it was read from.
    path: PathBuf,
    /// Its `nextUpdate`, in seconds since the epoch; `None` when it has none.
    next_update: Option<u64>,
    /// Its `thisUpdate`, in seconds since the epoch.
    this_update: i64,
    /// Its CRL number, big-endian without leading zeros; `None` when it has none.
    number: Option<Vec<u8>>,
    /// The key identifier of the key that signed it (its authority key identifier), to tell
    /// apart the CRLs of a CA re-keyed under the same name; `None` when it does not say.
    signer: Option<Vec<u8>>,
    /// Its issuing distribution point (DER), for a CA that partitions its CRLs (RFC 5280
    /// numbers a CA's CRLs per scope); `None` for a CRL of the CA's whole scope.
    scope: Option<Vec<u8>>,
}

impl CrlInUse {
    /// What `crl`, read from `path`, is; why not when it cannot be read.
    fn describe(path: &Path, crl: &CertificateRevocationListDer<'_>) -> Result<CrlInUse, String> {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|error| format!("it is not a CRL that can be read: {error}"))?;
        let signer =
            parsed
                .extensions()
                .iter()
                .find_map(|extension| match extension.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                    }
                    _ => None,
                });
        let scope = parsed
            .extensions()
            .iter()
            .find(|extension| {
                extension.oid == x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT
            })
            .map(|extension| extension.value.to_vec());
        Ok(CrlInUse {
            issuer: parsed.issuer().as_raw().to_vec(),
            issuer_name: parsed.issuer().to_string(),
            path: path.to_owned(),
            next_update: parsed
                .next_update()
                .map(|time| u64::try_from(time.timestamp()).unwrap_or(0)),
            this_update: parsed.last_update().timestamp(),
            number: parsed.crl_number().map(|number| number.to_bytes_be()),
            signer,
            scope,
        })
    }

    /// Whether it is past its `nextUpdate` at `now` (seconds since the epoch).
    pub(super) fn stale_at(&self, now: u64) -> bool {
        self.next_update.is_some_and(|next| next <= now)
    }

    /// Whether `other` is a CRL of the same series: the same issuer name, the same scope
    /// (issuing distribution point) and, when both say it, the same signing key.
    fn same_series(&self, other: &CrlInUse) -> bool {
        self.issuer == other.issuer
            && self.scope == other.scope
            && match (&self.signer, &other.signer) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }

    /// Why this CRL is older than `other`, a CRL of the same series, if it is: a lower CRL
    /// number (RFC 5280's order of a CA's CRLs) when both have one, else an earlier
    /// `thisUpdate`.
    fn older_than(&self, other: &CrlInUse) -> Option<String> {
        if let (Some(mine), Some(theirs)) = (&self.number, &other.number) {
            // Big-endian without leading zeros: the shorter is the smaller.
            return ((mine.len(), mine) < (theirs.len(), theirs)).then(|| {
                format!(
                    "its CRL number {} is below the number {} of a CRL already used",
                    hex::encode(mine),
                    hex::encode(theirs)
                )
            });
        }
        (self.this_update < other.this_update).then(|| {
            format!(
                "it was issued on {}, before a CRL already used ({})",
                rfc3339(self.this_update),
                rfc3339(other.this_update)
            )
        })
    }

    /// The error that refuses this CRL as older than one used (`reason`, see
    /// [`CrlInUse::older_than`]).
    fn older_error(&self, reason: String) -> TlsError {
        TlsError::CrlOlder {
            path: self.path.clone(),
            issuer: self.issuer_name.clone(),
            reason,
        }
    }

    /// Its `nextUpdate`, if it has one.
    pub(super) fn next_update(&self) -> Option<u64> {
        self.next_update
    }
}

/// A time in seconds since the epoch, as RFC 3339 (the number itself if it is out of range).
fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// When the CRLs in use go stale (their `nextUpdate`s), told on every request for the cost of
/// an atomic load or two: the latest `nextUpdate` already passed, and the next one to come,
/// looked up again only once that one has come.
#[derive(Debug)]
pub(super) struct StaleMarks {
    /// Every `nextUpdate` of the CRLs in use, in seconds since the epoch, sorted.
    next_updates: Mutex<Vec<u64>>,
    /// The latest of them at or before the last look (0: none).
    passed: AtomicU64,
    /// The first of them after the last look (`u64::MAX`: none).
    coming: AtomicU64,
}

impl StaleMarks {
    pub(super) fn new(crls: &[CrlInUse]) -> StaleMarks {
        let marks = StaleMarks {
            next_updates: Mutex::new(Vec::new()),
            passed: AtomicU64::new(0),
            coming: AtomicU64::new(0),
        };
        marks.replace(crls);
        marks
    }

    /// Takes the `nextUpdate`s of a new set of CRLs.
    pub(super) fn replace(&self, crls: &[CrlInUse]) {
        let mut next_updates = self.next_updates.lock().unwrap_or_else(|p| p.into_inner());
        *next_updates = crls.iter().filter_map(|crl| crl.next_update).collect();
        next_updates.sort_unstable();
        self.look(&next_updates, UnixTime::now().as_secs());
    }

    fn look(&self, next_updates: &[u64], now: u64) {
        let split = next_updates.partition_point(|at| *at <= now);
        let passed = split.checked_sub(1).map_or(0, |last| next_updates[last]);
        let coming = next_updates.get(split).copied().unwrap_or(u64::MAX);
        // `passed` first: a reader that sees the new `coming` sees it too.
        self.passed.store(passed, Ordering::Release);
        self.coming.store(coming, Ordering::Release);
    }

    /// The latest `nextUpdate` at or before `now`, in seconds since the epoch (0: none).
    pub(super) fn passed(&self, now: u64) -> u64 {
        if now >= self.coming.load(Ordering::Acquire) {
            let next_updates = self.next_updates.lock().unwrap_or_else(|p| p.into_inner());
            self.look(&next_updates, now);
        }
        self.passed.load(Ordering::Acquire)
    }
}

/// The error that says a CRL is past its `nextUpdate`.
pub(super) fn crl_expired(crl: &CrlInUse) -> TlsError {
    let next_update = crl.next_update.unwrap_or_default();
    TlsError::CrlExpired {
        path: crl.path.clone(),
        issuer: crl.issuer_name.clone(),
        next_update: i64::try_from(next_update).map_or_else(|_| next_update.to_string(), rfc3339),
    }
}

/// Loads the CRLs of a file: every `X509 CRL` block of a PEM file, or a single DER CRL. Fails when
/// a PEM file holds no CRL. The CRLs are parsed, and their signatures checked, only when a
/// verifier is built from them.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    parse_crls(path, read(CRL, path)?)
}

/// What a CRL is called in errors about the files.
const CRL: &str = "CRL";

/// The CRLs of a file's contents, `bytes` (see [`load_crls`]).
fn parse_crls(
    path: &Path,
    bytes: Vec<u8>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if !bytes.starts_with(b"-----BEGIN") && bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    every_pem_block(CRL, path, &bytes)
}

/// The CA bundle that a server's CRLs are checked against.
pub(super) struct Bundle<'a> {
    /// The bundle's file.
    pub(super) path: &'a Path,
    /// Its CAs, which sign the CRLs.
    pub(super) cas: &'a [CertificateDer<'static>],
    /// Its CAs as trust anchors.
    pub(super) roots: &'a Arc<RootCertStore>,
    pub(super) provider: &'a Arc<CryptoProvider>,
}

/// A set of CRLs refused: why, and the name (DER) of the CA it concerns.
struct Refused {
    error: TlsError,
    ca: Vec<u8>,
    /// The file of the CRL at fault, when one CRL is (an older or a stale one).
    file: Option<PathBuf>,
}

/// One CRL file as it was taken: what it held, its CRLs, and what each of them is.
#[derive(Clone)]
pub(super) struct CrlFile {
    path: PathBuf,
    /// The SHA-256 digest of what the file held: a change is told by what a file holds, not by
    /// its modification time, which a copy that keeps the old time, or two writes within the
    /// file system's time granularity, would leave unchanged.
    digest: [u8; 32],
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// What each CRL of `crls` is, at the same place.
    described: Vec<CrlInUse>,
}

impl CrlFile {
    /// Whether the file holds a CRL in the name of `issuer` (a name, DER).
    fn holds_crl_of(&self, issuer: &[u8]) -> bool {
        self.described.iter().any(|crl| crl.issuer == issuer)
    }
}

/// The CRLs of a set of files that the verifiers are built with: the newest of each series,
/// covering every CA of the bundle.
pub(super) struct CrlSet {
    /// The CRLs.
    pub(super) crls: Vec<CertificateRevocationListDer<'static>>,
    /// What each of them is, at the same place.
    pub(super) in_use: Vec<CrlInUse>,
}

/// Reads one CRL file and checks it on its own: that each CRL in the name of a CA of the bundle
/// (`cas`) is signed by it, and that a verifier takes them (with a throwaway verifier, so that a
/// bad CRL is reported with its file name). Any of these taken wrong would refuse every
/// certificate of a CA: refused here instead, at start, or while the CRLs in use stay.
fn read_crl_file(path: &Path, bytes: Vec<u8>, bundle: &Bundle<'_>) -> Result<CrlFile, TlsError> {
    let digest = Sha256::digest(&bytes).into();
    let crls = parse_crls(path, bytes)?;
    let mut described = Vec::with_capacity(crls.len());
    for crl in &crls {
        signed_by_its_ca(crl, bundle.cas).map_err(|reason| TlsError::CrlIssuer {
            path: path.to_owned(),
            reason,
        })?;
        described.push(
            CrlInUse::describe(path, crl).map_err(|reason| TlsError::CrlIssuer {
                path: path.to_owned(),
                reason,
            })?,
        );
    }
    WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), bundle.provider.clone())
        .with_crls(crls.iter().cloned())
        .build()
        .map_err(|source| TlsError::Crl {
            path: path.to_owned(),
            source,
        })?;
    Ok(CrlFile {
        path: path.to_owned(),
        digest,
        crls,
        described,
    })
}

/// Reads and checks every CRL file (see [`read_crl_file`]), and makes the set the verifiers
/// use of them (see [`newest_covering_every_ca`]). Returns the files as read, and the set.
pub(super) fn load_checked_crls(
    bundle: &Bundle<'_>,
    paths: &[PathBuf],
) -> Result<(Vec<CrlFile>, CrlSet), TlsError> {
    let files = paths
        .iter()
        .map(|path| read_crl_file(path, read(CRL, path)?, bundle))
        .collect::<Result<Vec<_>, _>>()?;
    let set = newest_covering_every_ca(bundle, &files).map_err(|refused| refused.error)?;
    Ok((files, set))
}

/// The set of CRLs the verifiers use of `files`: the newest CRL of each series (see
/// [`newest_of_each_series`]), checked to cover every CA of the bundle with a CRL that the CA
/// signed, not only one in its name: a CA re-keyed under the same name is another CA, and the
/// verifier refuses its certificates against a CRL that its key did not sign. A CA left uncovered is refused with its name (DER), since it would have every
/// certificate it issued refused.
fn newest_covering_every_ca(
    bundle: &Bundle<'_>,
    files: &[CrlFile],
) -> Result<CrlSet, Box<Refused>> {
    let (crls, in_use) = newest_of_each_series(
        files
            .iter()
            .flat_map(|file| file.crls.iter().cloned())
            .collect(),
        files
            .iter()
            .flat_map(|file| file.described.iter().cloned())
            .collect(),
    );
    for cert in bundle.cas {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            continue;
        };
        let signed_by_it = |crl: &CertificateRevocationListDer<'_>| {
            x509_parser::parse_x509_crl(crl.as_ref()).is_ok_and(|(_, crl)| {
                crl.issuer().as_raw() == cert.subject().as_raw()
                    && crl.verify_signature(cert.public_key()).is_ok()
            })
        };
        if !crls.iter().any(signed_by_it) {
            return Err(Box::new(Refused {
                error: TlsError::CaWithoutCrl {
                    ca: bundle.path.to_path_buf(),
                    ca_name: cert.subject().to_string(),
                },
                ca: cert.subject().as_raw().to_vec(),
                file: None,
            }));
        }
    }
    Ok(CrlSet { crls, in_use })
}

/// What a reload of the CRL files chose ([`choose_changes`]).
pub(super) struct Chosen {
    /// The files as they are taken now: a file refused as it was taken before.
    pub(super) files: Vec<CrlFile>,
    /// The set of CRLs made of `files`; `None` when no change is taken.
    pub(super) set: Option<CrlSet>,
    /// The changed files taken.
    pub(super) taken: Vec<PathBuf>,
    /// Why the other changed files were refused.
    pub(super) refused: Vec<TlsError>,
}

/// Chooses which changed CRL files a reload takes, each file on its own: `before` are the files
/// as taken last, `in_use` the CRLs in use, `used` the newest CRL used of each series, `now` the
/// time in seconds since the epoch. Returns `None` when no file changed.
///
/// A changed file is refused, and its CRLs taken before stay, when it cannot be read or its
/// CRLs cannot be used ([`read_crl_file`]), or when with it the set would put an older CRL of a
/// series in place of one used ([`CrlInUse::older_than`]), would replace a CA's current CRL by
/// stale ones only, or would leave a CA of the bundle without a CRL. Files are taken or refused
/// one by one so that one CA's bad or replayed CRL does not hold back the revocations of the
/// other CAs' new CRLs; a problem that names no changed file refuses them all.
pub(super) fn choose_changes(
    bundle: &Bundle<'_>,
    before: &[CrlFile],
    in_use: &[CrlInUse],
    used: &[CrlInUse],
    now: u64,
) -> Option<Chosen> {
    let mut files = before.to_vec();
    let mut changed = vec![false; before.len()];
    let mut refused = Vec::new();
    let mut any_change = false;
    for (index, file) in before.iter().enumerate() {
        let bytes = match read(CRL, &file.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                any_change = true;
                refused.push(error);
                continue;
            }
        };
        if <[u8; 32]>::from(Sha256::digest(&bytes)) == file.digest {
            continue;
        }
        any_change = true;
        match read_crl_file(&file.path, bytes, bundle) {
            Ok(read) => {
                files[index] = read;
                changed[index] = true;
            }
            Err(error) => refused.push(error),
        }
    }
    if !any_change {
        return None;
    }
    while changed.contains(&true) {
        let refused_set = match problem_with(bundle, &files, in_use, used, now) {
            Ok(set) => {
                let taken = (0..files.len())
                    .filter(|index| changed[*index])
                    .map(|index| files[index].path.clone())
                    .collect();
                return Some(Chosen {
                    files,
                    set: Some(set),
                    taken,
                    refused,
                });
            }
            Err(refused_set) => refused_set,
        };
        // Back to what was taken before: the changed file of the CRL at fault; else the changed
        // files that hold, or held, a CRL in the name of the CA at fault (a CA of the bundle
        // left without a CRL); else every changed file.
        let of_file: Vec<usize> = (0..files.len())
            .filter(|index| {
                changed[*index] && Some(&files[*index].path) == refused_set.file.as_ref()
            })
            .collect();
        let of_ca: Vec<usize> = (0..files.len())
            .filter(|index| {
                changed[*index]
                    && (files[*index].holds_crl_of(&refused_set.ca)
                        || before[*index].holds_crl_of(&refused_set.ca))
            })
            .collect();
        let at_fault = if !of_file.is_empty() {
            of_file
        } else if !of_ca.is_empty() {
            of_ca
        } else {
            (0..files.len()).filter(|index| changed[*index]).collect()
        };
        match refused_set.error {
            // Said of each file it is laid at, which the error alone does not name.
            TlsError::CaWithoutCrl { ca_name, .. } => {
                for index in &at_fault {
                    refused.push(TlsError::CrlWithdrawn {
                        path: files[*index].path.clone(),
                        ca_name: ca_name.clone(),
                    });
                }
            }
            error => refused.push(error),
        }
        for index in at_fault {
            files[index] = before[index].clone();
            changed[index] = false;
        }
    }
    Some(Chosen {
        files,
        set: None,
        taken: Vec::new(),
        refused,
    })
}

/// The set of CRLs of `files` (see [`newest_covering_every_ca`]), or what forbids taking it and
/// the name (DER) of the CA it concerns: a CA whose CRL in use (`in_use`) is current and that
/// the set gives stale CRLs only, or a CRL older than one of its series in `used`.
fn problem_with(
    bundle: &Bundle<'_>,
    files: &[CrlFile],
    in_use: &[CrlInUse],
    used: &[CrlInUse],
    now: u64,
) -> Result<CrlSet, Box<Refused>> {
    let set = newest_covering_every_ca(bundle, files)?;
    let current = |set: &[CrlInUse], issuer: &[u8]| {
        set.iter()
            .any(|crl| crl.issuer == issuer && !crl.stale_at(now))
    };
    for crl in set.in_use.iter().filter(|crl| crl.stale_at(now)) {
        if current(in_use, &crl.issuer) && !current(&set.in_use, &crl.issuer) {
            return Err(Box::new(Refused {
                error: crl_expired(crl),
                ca: crl.issuer.clone(),
                file: Some(crl.path.clone()),
            }));
        }
    }
    if let Some((crl, reason)) = first_older(used, &set.in_use) {
        return Err(Box::new(Refused {
            error: crl.older_error(reason),
            ca: crl.issuer.clone(),
            file: Some(crl.path.clone()),
        }));
    }
    Ok(set)
}

/// One series' newest CRL as the record of CRLs used keeps it (see [`super::TlsFiles::crl_marks`]):
/// what tells its series and its age, the binary values in hex.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CrlMark {
    issuer: String,
    issuer_name: String,
    signer: Option<String>,
    scope: Option<String>,
    number: Option<String>,
    this_update: i64,
}

/// Reads the record of CRLs used kept in `path`: none when the file does not exist.
pub(super) fn read_crl_marks(path: &Path) -> Result<Vec<CrlInUse>, TlsError> {
    let refused = |reason: String| TlsError::CrlMarks {
        path: path.to_owned(),
        doing: "read",
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(refused(error.to_string())),
    };
    let marks: Vec<CrlMark> =
        serde_json::from_slice(&bytes).map_err(|error| refused(error.to_string()))?;
    let unhex = |text: &str| hex::decode(text).map_err(|error| refused(error.to_string()));
    let unhex_some = |text: &Option<String>| text.as_deref().map(unhex).transpose();
    marks
        .iter()
        .map(|mark| {
            Ok(CrlInUse {
                issuer: unhex(&mark.issuer)?,
                issuer_name: mark.issuer_name.clone(),
                path: path.to_owned(),
                next_update: None,
                this_update: mark.this_update,
                number: unhex_some(&mark.number)?,
                signer: unhex_some(&mark.signer)?,
                scope: unhex_some(&mark.scope)?,
            })
        })
        .collect()
}

/// Writes `used` as the record of CRLs used in `path`, whole and durably.
pub(super) fn write_crl_marks(path: &Path, used: &[CrlInUse]) -> Result<(), TlsError> {
    let refused = |reason: String| TlsError::CrlMarks {
        path: path.to_owned(),
        doing: "written",
        reason,
    };
    let marks: Vec<CrlMark> = used
        .iter()
        .map(|crl| CrlMark {
            issuer: hex::encode(&crl.issuer),
            issuer_name: crl.issuer_name.clone(),
            signer: crl.signer.as_ref().map(hex::encode),
            scope: crl.scope.as_ref().map(hex::encode),
            number: crl.number.as_ref().map(hex::encode),
            this_update: crl.this_update,
        })
        .collect();
    let text = serde_json::to_vec_pretty(&marks).map_err(|error| refused(error.to_string()))?;
    crate::durable_folders::replace_file(path, &text, Readers::Owner)
        .map_err(|error| refused(error.to_string()))
}

/// Refuses `new`, a set of CRLs holding the newest of each series, when one of them is older
/// than a CRL of its series in `used` (the CRLs used before).
pub(super) fn refuse_older_than(used: &[CrlInUse], new: &[CrlInUse]) -> Result<(), TlsError> {
    match first_older(used, new) {
        Some((crl, reason)) => Err(crl.older_error(reason)),
        None => Ok(()),
    }
}

/// The first CRL of `new` older than a CRL of its series in `used`, and how it is older.
fn first_older<'a>(used: &[CrlInUse], new: &'a [CrlInUse]) -> Option<(&'a CrlInUse, String)> {
    new.iter().find_map(|crl| {
        used.iter()
            .filter(|old| crl.same_series(old))
            .find_map(|old| crl.older_than(old))
            .map(|reason| (crl, reason))
    })
}

/// The CRLs used, once `new` is taken: `new`, and those of `used` whose series `new` lacks.
pub(super) fn used_after(used: &[CrlInUse], new: &[CrlInUse]) -> Vec<CrlInUse> {
    let mut after: Vec<CrlInUse> = new.to_vec();
    after.extend(
        used.iter()
            .filter(|old| !new.iter().any(|crl| crl.same_series(old)))
            .cloned(),
    );
    after
}

/// Keeps, of the CRLs read (`crls`, each described by the entry of `described` at its place),
/// the newest of each series ([`CrlInUse::same_series`]), and drops the older ones: the
/// verifier consults the first CRL of a CA that it finds, so that an older CRL put before the
/// current one (a file with both) would take back revocations made since.
fn newest_of_each_series(
    crls: Vec<CertificateRevocationListDer<'static>>,
    described: Vec<CrlInUse>,
) -> (Vec<CertificateRevocationListDer<'static>>, Vec<CrlInUse>) {
    let superseded: Vec<bool> = described
        .iter()
        .map(|crl| {
            described
                .iter()
                .any(|other| other.same_series(crl) && crl.older_than(other).is_some())
        })
        .collect();
    crls.into_iter()
        .zip(described)
        .zip(superseded)
        .filter(|(_, superseded)| !superseded)
        .map(|(kept, _)| kept)
        .unzip()
}

/// Checks that a CRL in the name of a CA of the bundle is signed by it. rustls's verifier
/// checks a CRL's signature only when it consults the CRL for a certificate: a CRL of another
/// CA of the same name (a CA re-created, a file copied from the wrong environment) would be
/// taken at load, and then fail every handshake of the CA's certificates. Refused here instead,
/// the CRLs in use stay.
///
/// A CRL whose issuer is no CA of the bundle is let through: it is an intermediate CA's (sent
/// by clients in their chains, not kept in the bundle), which the verifier checks against the
/// intermediate when a chain goes through it.
pub(super) fn signed_by_its_ca(
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'_>],
) -> Result<(), String> {
    let (_, crl) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|error| format!("it is not a CRL that can be read: {error}"))?;
    let mut named = false;
    for ca in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        if ca.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(ca.public_key()).is_ok() {
            return Ok(());
        }
    }
    if named {
        Err(format!(
            "it names {} as its issuer, but that CA of the bundle did not sign it (a CRL of \
             another CA of the same name?)",
            crl.issuer()
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_is_older_by_its_number_or_else_by_its_issue_date() {
        let crl = |number: Option<u8>, this_update: i64, signer: Option<u8>| CrlInUse {
            issuer: b"CA".to_vec(),
            issuer_name: "CN=CA".into(),
            path: PathBuf::from("ca.crl"),
            next_update: None,
            this_update,
            number: number.map(|n| vec![n]),
            signer: signer.map(|s| vec![s]),
            scope: None,
        };
        let in_use = crl(Some(7), 2_000, Some(1));
        // The number decides when both have one, whatever the dates say.
        assert!(crl(Some(6), 3_000, Some(1)).older_than(&in_use).is_some());
        assert!(crl(Some(7), 1_000, Some(1)).older_than(&in_use).is_none());
        assert!(crl(Some(8), 1_000, Some(1)).older_than(&in_use).is_none());
        // A longer number is the larger one.
        // Another scope (issuing distribution point) of the same CA is another series.
        let mut partition = crl(Some(1), 0, Some(1));
        partition.scope = Some(vec![0x30, 0x00]);
        assert!(!partition.same_series(&in_use));
        let mut long = crl(None, 0, Some(1));
        long.number = Some(vec![1, 0]);
        assert!(long.older_than(&in_use).is_none());
        // Without numbers, the issue date.
        assert!(crl(None, 1_999, Some(1)).older_than(&in_use).is_some());
        assert!(crl(None, 2_000, Some(1)).older_than(&in_use).is_none());
        // Another key of a CA of the same name is another series; an unsaid key is the same.
        assert!(!crl(Some(1), 0, Some(2)).same_series(&in_use));
        assert!(crl(Some(1), 0, None).same_series(&in_use));
    }
}
