//! Leaves: the versioned, deterministic record of one fact, with commitments
//! in place of personal data.
//!
//! This module owns the [`Fact`] the pipeline fills, the [`Leaf`] that is
//! logged, and its byte encoding: a version byte `0x01` followed by the RFC
//! 8785 canonical JSON of the leaf. It must never put a name, a birth date, a
//! document number, a case id or a payload into a leaf in clear: those go
//! through [`Commitments`] (HMAC-SHA-256 under a per-case key) only.

use super::error::{AuditError, Result};
use super::tiles::MAX_ENTRY_LEN;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

/// The version byte that starts every leaf of this format.
pub const LEAF_VERSION: u8 = 1;

/// Bounds on the fields of a fact, so that a leaf always fits an entry bundle.
pub mod limits {
    /// Longest identifier (partner id, event type, event id, mapping id, field name).
    pub const ID_LEN: usize = 200;
    /// Most recipients in one fact.
    pub const RECIPIENTS: usize = 32;
    /// Most withheld field names in one fact.
    pub const WITHHELD: usize = 64;
    /// Most document numbers in one fact.
    pub const DOCUMENTS: usize = 16;
    /// Most searchable identifiers of one kind in one fact.
    pub const IDENTIFIERS: usize = 16;
    /// Largest native or canonical payload that is sealed beside the log, in bytes (one kept
    /// as its commitment only may be larger).
    pub const PAYLOAD_LEN: usize = 1 << 20;
    /// Largest number of messages one fact stands for: the largest integer that RFC 8785
    /// (I-JSON) writes exactly.
    pub const COUNT: u64 = (1 << 53) - 1;

    /// Whether `id` can be an identifier of a fact (partner id, event type, event id, mapping
    /// id, field name): not empty, at most [`ID_LEN`] bytes, no control characters.
    pub fn fits_identifier(id: &str) -> bool {
        !id.is_empty() && id.len() <= ID_LEN && !id.chars().any(char::is_control)
    }
}

/// The kind of fact a leaf records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A partner's message reached the gateway.
    Received,
    /// The message passed decoding, validation and authorisation.
    Accepted,
    /// The message was refused (the reason code says why).
    Rejected,
    /// The canonical event was delivered to a recipient.
    Delivered,
    /// A recipient acknowledged a delivery.
    Acknowledged,
    /// A delivery attempt failed; it will be tried again (the reason code says why).
    DeliveryFailed,
    /// Delivery was given up and the message dead-lettered.
    DeadLettered,
    /// An operator put a dead-lettered delivery back in line.
    Redelivered,
    /// An operator gave a dead-lettered delivery up for good: it will not be delivered.
    Discarded,
    /// A domain check flagged an anomaly (the message is still delivered).
    Anomaly,
    /// A case's keys were destroyed: its personal data can no longer be opened.
    Erased,
    /// The gateway's configuration (registry, mapping, policy) changed.
    ConfigurationChange,
}

/// The transport a message used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// HTTPS with mutual TLS.
    Rest,
    /// AMQP through the broker.
    Amqp,
}

/// The mapping that decoded or encoded a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRef {
    /// The mapping file's hash, as the mapping module writes it.
    pub hash: String,
    /// The mapping id.
    pub id: String,
}

/// A flight: operating carrier, number and departure date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// IATA carrier code, e.g. `AT`.
    pub carrier: String,
    /// Flight number, e.g. `529`.
    pub number: String,
    /// Scheduled departure date.
    pub date: NaiveDate,
}

/// The personal material of a fact: committed in the leaf, encrypted beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Personal {
    /// The native payload as the partner sent it (or as it was sent to them).
    pub native: Option<Vec<u8>>,
    /// The canonical payload.
    pub canonical: Option<Vec<u8>>,
    /// Document numbers (passport, LPC, ticket) mentioned by the message.
    pub documents: Vec<String>,
    /// Keep the commitments only, without the sealed copy: for refused messages, whose
    /// content the gateway must be able to recognise but has no reason to keep.
    pub commit_only: bool,
}

/// Identifiers an auditor may search by. They are indexed under keyed hashes
/// in the private part of the log and never written to a leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// Laissez-passer numbers.
    pub lpc: Vec<String>,
    /// Booking references.
    pub pnr: Vec<String>,
    /// Flights.
    pub flights: Vec<Flight>,
    /// Partners' own message references, as `(partner id, reference)`.
    pub partner_refs: Vec<(String, String)>,
    /// Police PV numbers.
    pub pv: Vec<String>,
    /// IOM case numbers.
    pub iom_case: Vec<String>,
}

/// One fact, as the pipeline hands it to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// What happened.
    pub kind: Kind,
    /// Gateway time of the fact.
    pub time: DateTime<Utc>,
    /// The sending partner id, if any.
    pub sender: Option<String>,
    /// The receiving partner ids.
    pub recipients: Vec<String>,
    /// The transport, if a message was involved.
    pub transport: Option<Transport>,
    /// The canonical event type (`ma.rva.…`).
    pub event_type: Option<String>,
    /// The event id (CloudEvents `id`).
    pub event_id: Option<String>,
    /// The mapping involved, if any.
    pub mapping: Option<MappingRef>,
    /// Names (paths) of fields withheld from a recipient under need-to-know.
    pub withheld: Vec<String>,
    /// A short machine-readable reason code (`[a-z0-9._-]`), for rejections,
    /// dead letters, anomalies and configuration changes. Never free text.
    pub reason: Option<String>,
    /// The case this fact concerns. Never logged in clear.
    pub case_id: Option<String>,
    /// How many messages the fact stands for, when it is a summary (the `rejected` summary
    /// of a sender's rate-limited messages). `None` for a fact about one message.
    pub count: Option<u64>,
    /// Personal material, committed and encrypted under the case's keys.
    pub personal: Personal,
    /// Identifiers for the auditors' index.
    pub identifiers: Identifiers,
}

impl Fact {
    /// A fact of the given kind at the given time, with every other field empty.
    pub fn new(kind: Kind, time: DateTime<Utc>) -> Self {
        Fact {
            kind,
            time,
            sender: None,
            recipients: Vec::new(),
            transport: None,
            event_type: None,
            event_id: None,
            mapping: None,
            withheld: Vec::new(),
            reason: None,
            case_id: None,
            count: None,
            personal: Personal::default(),
            identifiers: Identifiers::default(),
        }
    }

    /// Checks the bounds and the shape of every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AuditError::InvalidFact(m));
        let ids = self
            .sender
            .iter()
            .chain(&self.recipients)
            .chain(&self.event_type)
            .chain(&self.event_id)
            .chain(&self.withheld)
            .chain(self.mapping.iter().flat_map(|m| [&m.id, &m.hash]));
        for id in ids {
            if !limits::fits_identifier(id) {
                return bad(format!(
                    "identifier of {} bytes or with control characters",
                    id.len()
                ));
            }
        }
        if self.recipients.len() > limits::RECIPIENTS || self.withheld.len() > limits::WITHHELD {
            return bad("too many recipients or withheld fields".into());
        }
        if let Some(r) = &self.reason
            && (r.is_empty()
                || r.len() > 64
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)))
        {
            return bad("reason must be a short code of [a-z0-9._-]".into());
        }
        let p = &self.personal;
        if p.documents.len() > limits::DOCUMENTS
            || p.documents.iter().any(|d| d.len() > limits::ID_LEN)
        {
            return bad("too many document numbers, or one too long".into());
        }
        // The bound is on what is sealed and kept beside the log; a payload kept as its
        // commitment only may be of any size.
        if !p.commit_only
            && [&p.native, &p.canonical]
                .into_iter()
                .flatten()
                .any(|b| b.len() > limits::PAYLOAD_LEN)
        {
            return bad("payload too large".into());
        }
        let has_personal = p.native.is_some() || p.canonical.is_some() || !p.documents.is_empty();
        if has_personal && self.case_id.is_none() {
            return bad("personal material needs a case id".into());
        }
        if let Some(c) = &self.case_id
            && (c.trim().is_empty() || c.len() > limits::ID_LEN)
        {
            return bad("bad case id".into());
        }
        let i = &self.identifiers;
        if [
            i.lpc.len(),
            i.pnr.len(),
            i.flights.len(),
            i.partner_refs.len(),
            i.pv.len(),
            i.iom_case.len(),
        ]
        .iter()
        .any(|&n| n > limits::IDENTIFIERS)
        {
            return bad("too many identifiers".into());
        }
        if self.kind == Kind::Erased {
            return bad("erasure leaves are written by the log itself".into());
        }
        if self
            .count
            .is_some_and(|n| n == 0 || n > limits::COUNT || self.kind != Kind::Rejected)
        {
            return bad("only a rejected fact summarises messages, at least one".into());
        }
        Ok(())
    }
}

/// HMAC-SHA-256 commitments, hex-encoded, under a case's commitment key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitments {
    /// Commitment to the canonical payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// Commitment to the case id.
    pub case: String,
    /// Commitments to each document number, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<String>,
    /// Commitment to the native payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
}

/// What a commitment is over; each purpose has its own domain label.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// The case id.
    Case,
    /// A native payload.
    Native,
    /// A canonical payload.
    Canonical,
    /// A document number.
    Document,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Case => b"passerelle.audit.v1.commit.case\n",
            Purpose::Native => b"passerelle.audit.v1.commit.native\n",
            Purpose::Canonical => b"passerelle.audit.v1.commit.canonical\n",
            Purpose::Document => b"passerelle.audit.v1.commit.document\n",
        }
    }
}

/// `hex(HMAC-SHA-256(key, label || data))`.
pub fn commit(key: &[u8; 32], purpose: Purpose, data: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    mac.update(purpose.label());
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

impl Commitments {
    /// Computes the commitments of a fact's personal material.
    pub fn compute(key: &[u8; 32], case_id: &str, p: &Personal) -> Self {
        Commitments {
            case: commit(key, Purpose::Case, case_id.as_bytes()),
            native: p.native.as_deref().map(|b| commit(key, Purpose::Native, b)),
            canonical: p
                .canonical
                .as_deref()
                .map(|b| commit(key, Purpose::Canonical, b)),
            documents: p
                .documents
                .iter()
                .map(|d| commit(key, Purpose::Document, d.as_bytes()))
                .collect(),
        }
    }
}

/// The logged record of one fact. Its encoding is `0x01 || JCS(leaf)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leaf {
    /// Commitments to the personal material, when the fact concerns a case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitments: Option<Commitments>,
    /// How many messages the leaf stands for, when it is a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Canonical event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// What happened.
    pub kind: Kind,
    /// Mapping id and hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingRef>,
    /// Reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Receiving partner ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Sending partner id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Gateway time, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Format version, always 1 for this layout.
    pub v: u8,
    /// Names of withheld fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
}

impl Leaf {
    /// Builds the leaf of a validated fact, given its commitments.
    pub fn from_fact(fact: &Fact, commitments: Option<Commitments>) -> Leaf {
        Leaf {
            v: LEAF_VERSION,
            kind: fact.kind,
            time: fact.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            sender: fact.sender.clone(),
            recipients: fact.recipients.clone(),
            transport: fact.transport,
            event_type: fact.event_type.clone(),
            event_id: fact.event_id.clone(),
            mapping: fact.mapping.clone(),
            withheld: fact.withheld.clone(),
            reason: fact.reason.clone(),
            count: fact.count,
            commitments,
        }
    }

    /// The entry bytes: the version byte, then RFC 8785 canonical JSON.
    ///
    /// The leaf types declare their fields in RFC 8785 order (all keys are
    /// ASCII), hold no floating-point numbers, and serde_json escapes strings
    /// as RFC 8785 does, so plain serde_json output is already canonical; a
    /// test checks it against a general RFC 8785 canonicaliser. This is several
    /// times faster than canonicalising a generic JSON value on every append.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(768);
        out.push(LEAF_VERSION);
        serde_json::to_writer(&mut out, self)
            .map_err(|e| AuditError::InvalidFact(format!("leaf encoding: {e}")))?;
        if out.len() > MAX_ENTRY_LEN {
            return Err(AuditError::InvalidFact(format!(
                "leaf of {} bytes is too large",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Decodes entry bytes, checking the version and that the encoding is canonical.
    pub fn decode(entry: &[u8]) -> Result<Leaf> {
        let (&v, json) = entry
            .split_first()
            .ok_or_else(|| AuditError::Corrupt("empty leaf".into()))?;
        if v != LEAF_VERSION {
            return Err(AuditError::Corrupt(format!("unknown leaf version {v}")));
        }
        let leaf: Leaf = serde_json::from_slice(json)
            .map_err(|e| AuditError::Corrupt(format!("leaf is not valid: {e}")))?;
        if leaf.v != LEAF_VERSION || leaf.encode()? != entry {
            return Err(AuditError::Corrupt("leaf is not in canonical form".into()));
        }
        Ok(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fact {
        let mut f = Fact::new(Kind::Delivered, "2026-03-01T10:00:00Z".parse().unwrap());
        f.sender = Some("sn.consulat.casablanca".into());
        f.recipients = vec!["ma.interieur".into()];
        f.transport = Some(Transport::Rest);
        f.event_type = Some("ma.rva.lpc.issued".into());
        f.event_id = Some("evt-1".into());
        f.withheld = vec!["vulnerabilities".into()];
        f.case_id = Some("RVA-2026-000123".into());
        f.personal.native = Some(b"<lpc><nom>DIALLO Aminata</nom></lpc>".to_vec());
        f.personal.documents = vec!["LPC-SN-778812".into()];
        f
    }

    #[test]
    fn document_numbers_are_short() {
        let mut f = sample();
        f.personal.documents = vec!["X".repeat(limits::ID_LEN + 1)];
        assert!(matches!(f.validate(), Err(AuditError::InvalidFact(_))));
    }

    #[test]
    fn only_a_sealed_payload_is_bounded() {
        let mut f = sample();
        f.personal.native = Some(vec![b'x'; limits::PAYLOAD_LEN + 1]);
        assert!(matches!(f.validate(), Err(AuditError::InvalidFact(_))));
        f.personal.commit_only = true;
        f.validate().unwrap();
    }

    #[test]
    fn leaf_is_deterministic_and_holds_no_personal_data() {
        let f = sample();
        f.validate().unwrap();
        let key = [9u8; 32];
        let c = Commitments::compute(&key, "RVA-2026-000123", &f.personal);
        let a = Leaf::from_fact(&f, Some(c.clone())).encode().unwrap();
        let b = Leaf::from_fact(&f, Some(c)).encode().unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0], LEAF_VERSION);
        let text = String::from_utf8_lossy(&a);
        for secret in ["DIALLO", "Aminata", "RVA-2026-000123", "LPC-SN-778812"] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
        assert_eq!(Leaf::decode(&a).unwrap().event_id.as_deref(), Some("evt-1"));
    }

    #[test]
    fn encoding_is_rfc8785_canonical() {
        let mut f = sample();
        f.mapping = Some(MappingRef {
            id: "m\u{e9}\"/\\".into(),
            hash: "sha256:\u{1F600}\u{7f}".into(),
        });
        f.reason = Some("lpc.refused".into());
        f.withheld = vec![
            "a\u{2028}b".into(),
            "\u{fffd}".into(),
            "\u{1}\t\n\u{1f}\u{8}\u{c}\r".into(),
        ];
        f.recipients = vec!["z".into(), "a".into()];
        f.count = Some(limits::COUNT);
        let c = Commitments::compute(&[3; 32], "RVA-2026-000001", &f.personal);
        for leaf in [
            Leaf::from_fact(&f, Some(c)),
            Leaf::from_fact(&Fact::new(Kind::ConfigurationChange, f.time), None),
        ] {
            let ours = leaf.encode().unwrap();
            let jcs = serde_json_canonicalizer::to_vec(&leaf).unwrap();
            assert_eq!(ours[1..], jcs[..], "{}", String::from_utf8_lossy(&ours));
            // And the same after a round trip through a generic JSON value.
            let value: serde_json::Value = serde_json::from_slice(&ours[1..]).unwrap();
            assert_eq!(serde_json_canonicalizer::to_vec(&value).unwrap(), jcs);
        }
    }

    #[test]
    fn non_canonical_or_unknown_versions_are_rejected() {
        let leaf = Leaf::from_fact(&sample(), None);
        let mut e = leaf.encode().unwrap();
        e[0] = 2;
        assert!(Leaf::decode(&e).is_err());
        let mut spaced = vec![LEAF_VERSION];
        spaced.extend_from_slice(serde_json::to_string_pretty(&leaf).unwrap().as_bytes());
        assert!(Leaf::decode(&spaced).is_err());
    }

    #[test]
    fn validation_refuses_free_text_reasons_and_orphan_personal_data() {
        let mut f = sample();
        f.reason = Some("Nom: DIALLO".into());
        assert!(f.validate().is_err());
        let mut f = sample();
        f.case_id = None;
        assert!(f.validate().is_err());
        // Only a rejected fact summarises messages, and within the exact integers of JSON.
        let mut f = sample();
        f.count = Some(2);
        assert!(f.validate().is_err());
        f.kind = Kind::Rejected;
        f.validate().unwrap();
        for bad in [0, limits::COUNT + 1] {
            f.count = Some(bad);
            assert!(f.validate().is_err(), "{bad}");
        }
    }
}
