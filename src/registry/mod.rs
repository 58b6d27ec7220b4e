//! The partner registry: who the partners are, how they are recognised, what they may send,
//! how they receive, and the routing tables.
//!
//! This module owns reading and validating the registry file (see `config/registry.toml`),
//! matching a verified client certificate to a partner, authorising an event type for a
//! sender, and resolving an event's recipients from the catalogue and the routing tables.
//! Routing is data: no partner, country, carrier, event type or event field is named in this
//! code; the catalogue says which table each routed recipient reads and which fields give its
//! key, and the registry file holds the tables (this code names only the file's own tables).
//! It does no network I/O and never reads a message body to decide who the sender is.

use crate::canonical::{Catalogue, RoutedRecipient, TYPE_PREFIX, type_name};
use crate::mapping::MappingSet;
use crate::tls::issuers::Issuers;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How a partner receives the events addressed to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DeliveryEntry")]
pub enum Delivery {
    /// The partner polls `GET /v1/inbox` and acknowledges each message.
    Inbox,
    /// The gateway POSTs to the partner's HTTPS endpoint with its client certificate.
    Webhook {
        /// The endpoint, `https://…`.
        url: String,
    },
    /// The gateway publishes to the partner's outbound queue.
    Amqp {
        /// How a canonical event is put in a message.
        cloudevents: CloudEventsMode,
    },
}

impl Delivery {
    /// Whether the partner receives by AMQP.
    pub fn is_amqp(&self) -> bool {
        matches!(self, Delivery::Amqp { .. })
    }
}

/// How a canonical event is put in an AMQP message, in the terms of the CloudEvents AMQP
/// binding. A native message is sent as it is either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CloudEventsMode {
    /// The event's data is the body, its attributes `cloudEvents_*` headers (the default).
    #[default]
    Binary,
    /// The whole event is the body, as JSON (`application/cloudevents+json`), for a partner
    /// that reads the event as one document.
    Structured,
}

/// A `delivery` as written in the registry file. Read through this rather than straight into
/// [`Delivery`]: serde takes a tagged enum's unit variants without checking their other keys,
/// so `{ mode = "inbox", url = "…" }`, a webhook mistyped, would be an inbox without a word.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryEntry {
    mode: String,
    url: Option<String>,
    cloudevents: Option<String>,
}

impl TryFrom<DeliveryEntry> for Delivery {
    type Error = String;

    fn try_from(entry: DeliveryEntry) -> Result<Self, String> {
        let cloudevents = match (entry.mode.as_str(), entry.cloudevents.as_deref()) {
            ("amqp", None | Some("binary")) => CloudEventsMode::Binary,
            ("amqp", Some("structured")) => CloudEventsMode::Structured,
            ("amqp", Some(_)) => {
                return Err(
                    "unknown `cloudevents`: it is \"binary\" (the default) or \"structured\""
                        .to_owned(),
                );
            }
            (mode, Some(_)) => {
                return Err(format!(
                    "a delivery of mode {mode:?} takes no `cloudevents` (only mode \"amqp\" \
                     chooses how an event is put in a message)"
                ));
            }
            (_, None) => CloudEventsMode::Binary,
        };
        match (entry.mode.as_str(), entry.url) {
            ("webhook", Some(url)) => Ok(Delivery::Webhook { url }),
            ("webhook", None) => Err("a webhook delivery needs its `url`".into()),
            (mode @ ("inbox" | "amqp"), Some(_)) => Err(format!(
                "a delivery of mode {mode:?} takes no `url` (only mode \"webhook\" calls one)"
            )),
            ("inbox", None) => Ok(Delivery::Inbox),
            ("amqp", None) => Ok(Delivery::Amqp { cloudevents }),
            _ => Err(
                "unknown delivery `mode`: the modes are \"inbox\", \"webhook\" and \"amqp\""
                    .to_owned(),
            ),
        }
    }
}

/// One partner's entry, as written in the registry file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerEntry {
    /// The partner id, e.g. `sn.consulat.casablanca`.
    pub id: String,
    /// The partner's role: `ministry`, `consulate`, `border-police`, `airline`, `iom` or
    /// `auditor`.
    pub role: String,
    /// The URI SAN its client certificate carries; defaults to `urn:partner:<id>`.
    #[serde(default)]
    pub identity: Option<String>,
    /// Pinned SHA-256 fingerprints (`sha256:<hex>`) of its certificates, if any.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// The CA of the bundle (`tls.ca`) that issues its certificates: its subject name, as
    /// `passerelle certs identity` prints it (`issuer:`), or the SHA-256 fingerprint of its
    /// certificate (`sha256:<hex>`). A certificate naming this partner must chain to that CA:
    /// another CA of the bundle cannot issue one; so must its webhook endpoint's certificate,
    /// if it has one. Required of every entry without
    /// `fingerprints` when the bundle holds more than one CA certificate
    /// ([`Registry::check_issuers`]).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The event types it may send (without `ma.rva.`); by default, those the catalogue
    /// allows its role. An entry can only narrow the default.
    #[serde(default)]
    pub sends: Option<Vec<String>>,
    /// The mapping ids in force for it (`<partner>/<kind>`, as its mapping file names its
    /// inbound, ignored and outbound kinds, and `<partner>/cloudevents` for a partner that
    /// sends or reads canonical events); by default, every mapping of its file. A message
    /// whose mapping is not listed is refused (`403`); an event for this partner whose
    /// outbound mapping is not listed is not written for it (its delivery is created dead,
    /// [`crate::store::NOT_IN_FORCE`]). Auditors have none.
    #[serde(default)]
    pub mappings: Option<Vec<String>>,
    /// How it receives; auditors receive nothing and have none.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

impl PartnerEntry {
    /// The URI SAN that identifies the partner.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| format!("urn:partner:{}", self.id))
    }
}

/// The routing tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Nationality (ISO alpha-3) to the consulate that serves it.
    #[serde(default)]
    pub consulate_by_nationality: BTreeMap<String, String>,
    /// The IOM mission in Morocco.
    #[serde(default)]
    pub iom_morocco: Option<String>,
    /// Destination country (ISO alpha-3) to the IOM mission there.
    #[serde(default)]
    pub iom_by_destination_country: BTreeMap<String, String>,
    /// Destination airport (IATA) to its country (ISO alpha-3), for routing by destination.
    #[serde(default)]
    pub airport_country: BTreeMap<String, String>,
    /// IATA carrier code to the airline partner.
    #[serde(default)]
    pub airline_by_carrier: BTreeMap<String, String>,
}

impl Routing {
    /// A table of partners by key, by its name in the registry file (`consulate_by_nationality`,
    /// `iom_by_destination_country`, `airline_by_carrier`), or of codes (`airport_country`).
    pub fn table(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        match name {
            "consulate_by_nationality" => Some(&self.consulate_by_nationality),
            "iom_by_destination_country" => Some(&self.iom_by_destination_country),
            "airport_country" => Some(&self.airport_country),
            "airline_by_carrier" => Some(&self.airline_by_carrier),
            _ => None,
        }
    }

    /// A setting that names one partner, by its name in the registry file (`iom_morocco`):
    /// `None` when there is no such setting, `Some(None)` when it is not set.
    pub fn single(&self, name: &str) -> Option<Option<&String>> {
        match name {
            "iom_morocco" => Some(self.iom_morocco.as_ref()),
            _ => None,
        }
    }

    /// The partners that a routed recipient of an event names, with the keys it read:
    /// each key found in `keys` looked up in the recipient's table (through its `through`
    /// table first). A key with no entry names nobody.
    fn lookup(&self, routed: &RoutedRecipient, keys: &[String]) -> Vec<Option<String>> {
        let Some(table) = self.table(&routed.table) else {
            return Vec::new();
        };
        keys.iter()
            .map(|key| {
                let key = match &routed.through {
                    Some(through) => self.table(through)?.get(key)?,
                    None => key,
                };
                table.get(key).cloned()
            })
            .collect()
    }

    /// The codes of the tables that are not in the form events carry them, each a problem: an
    /// entry keyed `sen`, `Senegal` or `dss` would load, never match, and leave every event it
    /// was meant for unrouted.
    fn malformed_codes(&self) -> Vec<String> {
        let country = |code: &str| code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase());
        let airport = country;
        let carrier = |code: &str| {
            code.len() == 2
                && code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        let mut problems = Vec::new();
        let mut check = |table: &str, code: &str, valid: bool, form: &str| {
            if !valid {
                problems.push(format!("routing {table}: {code:?} is not {form}"));
            }
        };
        const ALPHA3: &str = "an ISO 3166 alpha-3 country code in capitals (SEN)";
        for code in self.consulate_by_nationality.keys() {
            check("consulate_by_nationality", code, country(code), ALPHA3);
        }
        for code in self.iom_by_destination_country.keys() {
            check("iom_by_destination_country", code, country(code), ALPHA3);
        }
        for (code, to) in &self.airport_country {
            check(
                "airport_country",
                code,
                airport(code),
                "an IATA airport code in capitals (DSS)",
            );
            check("airport_country", to, country(to), ALPHA3);
        }
        for code in self.airline_by_carrier.keys() {
            check(
                "airline_by_carrier",
                code,
                carrier(code),
                "an IATA carrier code of two capitals or digits (AT)",
            );
        }
        problems
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(rename = "partner")]
    partners: Vec<PartnerEntry>,
    #[serde(default)]
    routing: Routing,
}

/// Why the registry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file cannot be read or parsed.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The content is inconsistent; every problem is listed.
    #[error("the registry is not valid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Why a certificate or a sender is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The certificate names no registered partner.
    #[error("the client certificate identifies no registered partner: {0}")]
    UnknownIdentity(Unidentified),
    /// The certificate matches a partner whose pins it does not satisfy.
    #[error("the client certificate of {0} does not match its pinned fingerprints")]
    PinMismatch(String),
    /// The certificate names a partner whose CA did not issue it.
    #[error(
        "the client certificate names {partner}, but was not issued by its CA ({issuer}): \
         only that CA issues {partner}'s certificates"
    )]
    WrongIssuer {
        /// The partner the certificate names.
        partner: String,
        /// The CA that issues that partner's certificates.
        issuer: String,
    },
    /// The certificate names more than one registered partner.
    #[error(
        "the client certificate names several registered partners ({}): a certificate must identify one",
        .0.join(", ")
    )]
    Ambiguous(Vec<String>),
    /// The sender's role may not send this event type.
    #[error("partner {partner} (role {role}) may not send {event_type}")]
    NotAllowed {
        /// The sender.
        partner: String,
        /// Its role.
        role: String,
        /// The event type.
        event_type: String,
    },
    /// The sender's role may send this event type, but its registry entry narrows what it
    /// sends (`sends`) and leaves it out.
    #[error(
        "partner {partner} may not send {event_type}: its registry entry's `sends` leaves it \
         out (its role, {role}, may send it; the gateway's operator can add it)"
    )]
    NotInSends {
        /// The sender.
        partner: String,
        /// Its role.
        role: String,
        /// The event type.
        event_type: String,
    },
}

/// Why a certificate's URI subject alternative names identify no partner. The names
/// themselves are not quoted: a refusal's text is logged and audited, and a certificate can
/// carry anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unidentified {
    /// It carries no URI name at all (a common name or a DNS name is never read).
    #[error(
        "it carries no URI subject alternative name; a partner's certificate carries \
         urn:partner:<id> (its common name and DNS names are never read)"
    )]
    NoUri,
    /// None of its URI names has the form registry identities take by default.
    #[error(
        "none of its URI subject alternative names has the form urn:partner:<id> (the identity \
         of every registry entry that names no other) or is a registered partner's identity"
    )]
    NoPartnerUri,
    /// Its URI names have the form, but no registry entry has them.
    #[error(
        "none of its URI subject alternative names is a registered partner's identity: the \
         gateway's operator registers a partner before it connects"
    )]
    Unregistered,
}

impl Unidentified {
    /// Why `uri_sans` identify no partner.
    fn of(uri_sans: &[String]) -> Self {
        if uri_sans.is_empty() {
            Unidentified::NoUri
        } else if uri_sans.iter().any(|uri| uri.starts_with("urn:partner:")) {
            Unidentified::Unregistered
        } else {
            Unidentified::NoPartnerUri
        }
    }
}

/// The validated registry.
#[derive(Debug, Clone)]
pub struct Registry {
    partners: BTreeMap<String, PartnerEntry>,
    by_identity: BTreeMap<String, String>,
    allowed: BTreeMap<String, BTreeSet<String>>,
    /// The mapping ids in force for each partner with a mapping file.
    mappings_in_force: BTreeMap<String, BTreeSet<String>>,
    routing: Routing,
    catalogue: Catalogue,
}

/// The longest partner id accepted (a DNS name's limit).
pub const MAX_PARTNER_ID_LEN: usize = 253;

/// Whether `id` is a well-formed partner id: a dotted name of lowercase letters, digits and
/// inner hyphens (`sn.consulat.casablanca`), at most [`MAX_PARTNER_ID_LEN`] long. Partner ids
/// name files (mappings, certificates), URNs and audit cases, so they are kept to this; it
/// also keeps them apart from the other senders the audit log names (`sha256:` fingerprints).
pub fn is_well_formed_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PARTNER_ID_LEN
        && id.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Reads a registry file's text, without checking it. A refusal names the key at fault
/// (`partner[3].delivery.url`) and its line, without quoting the line or the value: a webhook
/// URL may carry a token.
fn read_registry_file(text: &str) -> Result<RegistryFile, RegistryError> {
    crate::error_text::from_toml(text).map_err(|refusal| RegistryError::File {
        file: "registry".into(),
        message: match refusal.key {
            Some(key) => format!("{}: {}", named_entry(text, &key), refusal.problem),
            None => refusal.problem,
        },
    })
}

/// A key path as serde gives it (`partner[3].delivery.url`, counting entries from 0), with the
/// partner entry named by its id when it has one (`partner ma.dgsn: delivery.url`).
fn named_entry(text: &str, key: &str) -> String {
    let Some((index, rest)) = key
        .strip_prefix("partner[")
        .and_then(|rest| rest.split_once(']'))
    else {
        return key.to_owned();
    };
    let id = index.parse::<usize>().ok().and_then(|index| {
        let table: toml::Table = toml::from_str(text).ok()?;
        let entry = table.get("partner")?.as_array()?.get(index)?;
        entry.get("id")?.as_str().map(str::to_owned)
    });
    match id {
        Some(id) if is_well_formed_partner_id(&id) => {
            format!("partner {id}: {}", rest.trim_start_matches('.'))
        }
        _ => key.to_owned(),
    }
}

impl Registry {
    /// Reads and validates a registry file against the catalogue and the loaded mappings.
    pub fn load(
        path: &Path,
        catalogue: &Catalogue,
        mappings: &MappingSet,
    ) -> Result<Self, RegistryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::File {
            file: file.clone(),
            message: format!("the partner registry cannot be read: {error}"),
        })?;
        Self::parse(&text, catalogue, mappings).map_err(|error| match error {
            RegistryError::File { message, .. } => RegistryError::File { file, message },
            RegistryError::Invalid(problems) => RegistryError::File {
                file,
                message: RegistryError::Invalid(problems).to_string(),
            },
        })
    }

    /// The partner ids of a registry file, in its order, read without validating the rest
    /// (for tools that need only the ids, such as the development PKI).
    pub fn partner_ids(path: &Path) -> Result<Vec<String>, RegistryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::File {
            file: file.clone(),
            message: error.to_string(),
        })?;
        let parsed = read_registry_file(&text).map_err(|error| match error {
            RegistryError::File { message, .. } => RegistryError::File { file, message },
            other => other,
        })?;
        Ok(parsed.partners.into_iter().map(|p| p.id).collect())
    }

    /// Parses and validates registry text.
    pub fn parse(
        text: &str,
        catalogue: &Catalogue,
        mappings: &MappingSet,
    ) -> Result<Self, RegistryError> {
        let parsed = read_registry_file(text)?;
        let mut problems = Vec::new();
        let mut partners = BTreeMap::new();
        let mut by_identity = BTreeMap::new();
        let mut allowed = BTreeMap::new();
        let mut mappings_in_force = BTreeMap::new();
        for entry in parsed.partners {
            let id = entry.id.clone();
            if !is_well_formed_partner_id(&id) {
                problems.push(format!(
                    "partner {id:?}: an id is a dotted name of lowercase letters, digits and inner hyphens, at most {MAX_PARTNER_ID_LEN} long"
                ));
            }
            if id == crate::pipeline::UNREGISTERED {
                problems.push(format!(
                    "partner {id}: the id is reserved for certificates the registry does not know"
                ));
            }
            if id == crate::pipeline::UNVERIFIED {
                problems.push(format!(
                    "partner {id}: the id is reserved for certificates the TLS handshake refuses"
                ));
            }
            if !catalogue.roles().any(|role| role == entry.role) {
                problems.push(format!(
                    "partner {id}: unknown role {:?} (roles: {})",
                    entry.role,
                    catalogue.roles().collect::<Vec<_>>().join(", ")
                ));
            }
            if entry.role != "auditor" {
                match mappings.partner(&id) {
                    None => problems.push(format!("partner {id}: no mapping file {id}.toml")),
                    Some(mapping) if mapping.role != entry.role => problems.push(format!(
                        "partner {id}: role {} here but {} in its mapping file",
                        entry.role, mapping.role
                    )),
                    Some(mapping) => {
                        let defined = mapping.mapping_ids();
                        let in_force = match &entry.mappings {
                            None => defined,
                            Some(listed) => {
                                if listed.is_empty() {
                                    problems.push(format!(
                                        "partner {id}: mappings lists no mapping (leave it out to put every mapping of {id}.toml in force)"
                                    ));
                                }
                                for unknown in listed.iter().filter(|m| !defined.contains(m)) {
                                    problems.push(format!(
                                        "partner {id}: mapping {unknown} is not defined by {id}.toml (it defines {})",
                                        defined.join(", ")
                                    ));
                                }
                                warn_of_unwritable(mapping, listed);
                                listed.clone()
                            }
                        };
                        mappings_in_force.insert(id.clone(), in_force.into_iter().collect());
                    }
                }
                if entry.delivery.is_none() {
                    problems.push(format!(
                        "partner {id}: no delivery mode (inbox, webhook or amqp)"
                    ));
                }
            } else if entry.delivery.is_some() || entry.sends.is_some() || entry.mappings.is_some()
            {
                problems.push(format!(
                    "partner {id}: an auditor sends and receives no events"
                ));
            }
            if let Some(identity) = &entry.identity
                && !is_uri(identity)
            {
                // Not quoted, as no value of the file is.
                problems.push(format!(
                    "partner {id}: identity is not a URI (such as urn:partner:{id}): it is the \
                     URI subject alternative name its certificates carry"
                ));
            }
            if let Some(Delivery::Webhook { url }) = &entry.delivery
                && let Err(why) = check_webhook_url(url)
            {
                // Not quoted: a URL may carry a token or a password in its user part or query.
                problems.push(format!("partner {id}: its webhook URL {why}"));
            }
            for (number, pin) in entry.fingerprints.iter().enumerate() {
                let valid = pin.strip_prefix("sha256:").is_some_and(|hex| {
                    hex.len() == 64
                        && hex
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                });
                if !valid {
                    problems.push(format!(
                        "partner {id}: fingerprints, number {}, is not sha256:<64 lower-case hex>",
                        number + 1
                    ));
                }
            }
            let by_role: BTreeSet<String> = catalogue
                .names()
                .filter(|name| {
                    catalogue
                        .get(name)
                        .is_some_and(|t| t.senders.contains(&entry.role))
                })
                .map(str::to_owned)
                .collect();
            let sends = match &entry.sends {
                None => by_role,
                Some(narrowed) => {
                    for name in narrowed.iter().filter(|name| !by_role.contains(*name)) {
                        let short = name.strip_prefix(TYPE_PREFIX).unwrap_or(name);
                        problems.push(if short != name && by_role.contains(short) {
                            format!(
                                "partner {id}: sends lists {name:?}: write event types without \
                                 {TYPE_PREFIX:?} (\"{short}\")"
                            )
                        } else if catalogue.get(short).is_none() {
                            format!(
                                "partner {id}: sends lists {name:?}, which is not an event type of \
                                 the catalogue (schemas/catalogue.toml; written without \
                                 {TYPE_PREFIX:?})"
                            )
                        } else {
                            format!(
                                "partner {id}: sends lists {name}, which the catalogue does not \
                                 allow role {} to send (sends can only narrow what the role may send)",
                                entry.role
                            )
                        });
                    }
                    narrowed.iter().cloned().collect()
                }
            };
            allowed.insert(id.clone(), sends);
            if let Some(previous) = by_identity.insert(entry.identity(), id.clone()) {
                problems.push(format!(
                    "partners {previous} and {id} share the identity {}",
                    entry.identity()
                ));
            }
            if partners.insert(id.clone(), entry).is_some() {
                problems.push(format!("partner {id} is registered twice"));
            }
        }
        let routing = parsed.routing;
        let mut check_target = |table: &str, target: &str, role: &str| match partners.get(target) {
            None => problems.push(format!(
                "routing {table}: {target} is not a registered partner"
            )),
            Some(entry) if entry.role != role => problems.push(format!(
                "routing {table}: {target} has role {}, not {role}",
                entry.role
            )),
            Some(_) => {}
        };
        // Each routed recipient of the catalogue names partners of its role through a table
        // of this file: the table must exist, and name partners of that role.
        let mut catalogue_problems = Vec::new();
        for (name, routed) in catalogue.routed_recipients() {
            let table = &routed.table;
            match (routing.table(table), routing.single(table)) {
                (Some(entries), _) if !routed.keys.is_empty() => {
                    for target in entries.values() {
                        check_target(table, target, &routed.role);
                    }
                }
                (_, Some(Some(target))) if routed.keys.is_empty() => {
                    check_target(table, target, &routed.role);
                }
                (_, Some(None)) if routed.keys.is_empty() => {
                    catalogue_problems.push(format!("routing: {table} is not set"));
                }
                _ => catalogue_problems.push(format!(
                    "the catalogue's routed recipient {name} reads routing table {table}, which \
                     this registry has not (or not of that shape)"
                )),
            }
            if let Some(through) = &routed.through
                && routing.table(through).is_none()
            {
                catalogue_problems.push(format!(
                    "the catalogue's routed recipient {name} goes through routing table \
                     {through}, which this registry has not"
                ));
            }
        }
        problems.extend(catalogue_problems);
        problems.extend(routing.malformed_codes());
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems));
        }
        Ok(Self {
            partners,
            by_identity,
            allowed,
            mappings_in_force,
            routing,
            catalogue: catalogue.clone(),
        })
    }

    /// A partner's entry.
    pub fn partner(&self, id: &str) -> Option<&PartnerEntry> {
        self.partners.get(id)
    }

    /// Every partner, by id.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerEntry> {
        self.partners.values()
    }

    /// Identifies the partner from a verified certificate's URI SANs and fingerprint. A
    /// certificate whose SANs name two registered partners identifies neither: which one it
    /// acted as must not depend on the order of its SANs.
    pub fn identify(
        &self,
        uri_sans: &[String],
        fingerprint: &str,
    ) -> Result<&PartnerEntry, AccessError> {
        let named: BTreeSet<&String> = uri_sans
            .iter()
            .filter_map(|san| self.by_identity.get(san))
            .collect();
        if named.len() > 1 {
            return Err(AccessError::Ambiguous(named.into_iter().cloned().collect()));
        }
        let entry = named
            .into_iter()
            .next()
            .and_then(|id| self.partners.get(id))
            .ok_or_else(|| AccessError::UnknownIdentity(Unidentified::of(uri_sans)))?;
        if !entry.fingerprints.is_empty()
            && !entry.fingerprints.iter().any(|pin| pin == fingerprint)
        {
            return Err(AccessError::PinMismatch(entry.id.clone()));
        }
        Ok(entry)
    }

    /// Checks every entry's `issuer` against the CA bundle (`issuers`): each must name CAs of
    /// it, by a subject name that stands for one name, or by a certificate's fingerprint. When
    /// the bundle holds more than one CA certificate, an entry without pinned fingerprints must
    /// name its CA: otherwise any of them could issue a certificate that names its partner, and
    /// act as it.
    pub fn check_issuers(&self, issuers: &Issuers) -> Result<(), RegistryError> {
        let cas = issuers.cas();
        let mut problems = Vec::new();
        for entry in self.partners.values() {
            let id = &entry.id;
            match &entry.issuer {
                Some(issuer) if issuers.ambiguous(issuer) => problems.push(format!(
                    "partner {id}: its issuer is the printed name of several different \
                     CA names of the bundle (tls.ca): name its CA by the fingerprint of its \
                     certificate (issuer = \"sha256:…\")"
                )),
                Some(issuer) if !issuers.names(issuer) => problems.push(format!(
                    "partner {id}: its issuer names no CA of the bundle (tls.ca)"
                )),
                None if cas.len() > 1 && entry.fingerprints.is_empty() => problems.push(format!(
                    "partner {id}: the CA bundle (tls.ca) holds {} CA certificates, so the \
                     entry must name the CA that issues its certificates (issuer, its name or \
                     fingerprint), or pin them (fingerprints): otherwise any of them could \
                     issue a certificate that acts as {id}",
                    cas.len()
                )),
                _ => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        // The bundle's CAs once, after the entries' problems, rather than in each of them.
        problems.push(format!(
            "the CAs of the bundle (tls.ca), as issuer takes them (name, or fingerprint): {}",
            cas.iter()
                .map(|(name, print)| format!("{name:?} ({print})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Err(RegistryError::Invalid(problems))
    }

    /// Authorises a sender for an event type (`ma.rva.lpc.issued` or `lpc.issued`).
    pub fn authorise(&self, partner: &str, event_type: &str) -> Result<(), AccessError> {
        let name = event_type.strip_prefix(TYPE_PREFIX).unwrap_or(event_type);
        let role = self
            .partners
            .get(partner)
            .map(|p| p.role.clone())
            .unwrap_or_default();
        if self
            .allowed
            .get(partner)
            .is_some_and(|types| types.contains(name))
        {
            Ok(())
        } else if self
            .catalogue
            .get(name)
            .is_some_and(|t| t.senders.contains(&role))
        {
            Err(AccessError::NotInSends {
                partner: partner.into(),
                role,
                event_type: event_type.into(),
            })
        } else {
            Err(AccessError::NotAllowed {
                partner: partner.into(),
                role,
                event_type: event_type.into(),
            })
        }
    }

    /// Whether a mapping (`<partner>/<kind>`, as decoding and encoding name it) is in force
    /// for a partner.
    pub fn mapping_in_force(&self, partner: &str, mapping_id: &str) -> bool {
        self.mappings_in_force
            .get(partner)
            .is_some_and(|ids| ids.contains(mapping_id))
    }

    /// Whether `sender` speaks outside its scope in `event`, with the anomaly code and its
    /// message: the catalogue names, for some types, a routed recipient that the sender must be
    /// (a consulate issuing a laissez-passer to a holder whose nationality the routing tables
    /// give another consulate, or none; an airline reporting a boarding on flights of carriers
    /// the tables give another airline, or none). An event that gives no key for it is in
    /// scope. Such an event is accepted and delivered, flagged, and does not count on its
    /// case's file (a consulate's typing error in a case id must not put an LPC on another
    /// person's case).
    pub fn out_of_scope(&self, sender: &str, event: &Value) -> Option<(String, String)> {
        let scope = self.catalogue.get(type_name(event))?.scope.as_deref()?;
        let routed = self.catalogue.routed(scope)?;
        let keys = routed.keys_of(&event["data"]);
        if keys.is_empty() {
            return None;
        }
        let targets = self.routing.lookup(routed, &keys);
        if targets.iter().flatten().any(|target| target == sender) {
            return None;
        }
        let named: Vec<&str> = targets.iter().flatten().map(String::as_str).collect();
        Some((
            format!("scope.not_the_{}", scope.replace('-', "_")),
            format!(
                "the routing tables give {} {} {}, not the sender",
                routed.table,
                keys.join(", "),
                if named.is_empty() {
                    "to no partner".to_owned()
                } else {
                    format!("to {}", named.join(", "))
                }
            ),
        ))
    }

    /// The recipients of an event, resolved from the catalogue and the routing tables, in
    /// order and without duplicates. The sender never receives its own event. A routed
    /// recipient that cannot be resolved (no table entry) is reported in the second list.
    ///
    /// `journey_ends` are the airports where the case's bookings end, from its case's file
    /// (see the catalogue's `journey_end`); empty when none is on file.
    pub fn recipients(
        &self,
        sender: &str,
        event: &Value,
        journey_ends: &[String],
    ) -> (Vec<String>, Vec<String>) {
        self.route(sender, event, Some(journey_ends))
    }

    /// The recipients of an event that its sender is told of, and the routed recipients among
    /// them that cannot be resolved: those of [`Registry::recipients`] that the event alone
    /// decides. The IOM mission of the destination follows the case's booking, when one is on
    /// file: naming it, or saying that it cannot be resolved, would tell any sender whether a
    /// case it has no part in is booked, and where to.
    pub fn recipients_told_to_sender(
        &self,
        sender: &str,
        event: &Value,
    ) -> (Vec<String>, Vec<String>) {
        self.route(sender, event, None)
    }

    /// Resolves the recipients; without `journey_ends`, the recipients that the case's file
    /// decides are left out.
    fn route(
        &self,
        sender: &str,
        event: &Value,
        journey_ends: Option<&[String]>,
    ) -> (Vec<String>, Vec<String>) {
        let name = type_name(event);
        let data = &event["data"];
        let mut found: Vec<String> = Vec::new();
        let mut unresolved = Vec::new();
        let Some(entry) = self.catalogue.get(name) else {
            return (found, unresolved);
        };
        for recipient in &entry.recipients {
            let targets = match self.catalogue.routed(recipient) {
                // Decided by the case's file, which the sender is not told of.
                Some(routed) if routed.journey_end && journey_ends.is_none() => continue,
                Some(routed) => self.targets_of_routed(
                    recipient,
                    routed,
                    data,
                    journey_ends.unwrap_or_default(),
                    &mut unresolved,
                ),
                None => self
                    .partners
                    .values()
                    .filter(|p| p.role == *recipient)
                    .map(|p| p.id.clone())
                    .collect(),
            };
            if targets.is_empty() {
                unresolved.push(recipient.clone());
            }
            for target in targets {
                if target != sender && !found.contains(&target) {
                    found.push(target);
                }
            }
        }
        (found, unresolved)
    }

    /// The partners a routed recipient (`name`, `routed`) of an event with `data` resolves to.
    ///
    /// - A recipient whose table names one partner (IOM Morocco) is that partner.
    /// - With `every` (the operating airline), each key found names its partner; a key that
    ///   names none (a connection on an airline that is not a partner) is not informed, and
    ///   the resolution is noted as partial in `unresolved`, though the others are informed.
    /// - With `journey_end` (the IOM mission of the destination), the ends of the journeys
    ///   booked on the case's file (`journey_ends`), when there are some, stand for the event's
    ///   own key: a boarding names only the leg boarded, and the first leg of a connecting
    ///   journey lands in another country, whose mission must not learn of the person. Keys
    ///   that lead to different partners, or to none (a booking changed to another
    ///   destination), resolve to none, and the event is flagged unresolved rather than sent to
    ///   a partner that may not need it.
    /// - Otherwise the first key found names its partner.
    fn targets_of_routed(
        &self,
        name: &str,
        routed: &RoutedRecipient,
        data: &Value,
        journey_ends: &[String],
        unresolved: &mut Vec<String>,
    ) -> Vec<String> {
        if routed.keys.is_empty() {
            return self
                .routing
                .single(&routed.table)
                .flatten()
                .cloned()
                .into_iter()
                .collect();
        }
        let keys = if routed.journey_end && !journey_ends.is_empty() {
            journey_ends.to_vec()
        } else {
            routed.keys_of(data)
        };
        let targets = self.routing.lookup(routed, &keys);
        if routed.every {
            // Repeats (two legs on one airline) are left to `route`, which adds each once.
            let named: Vec<String> = targets.iter().flatten().cloned().collect();
            if !named.is_empty() && targets.iter().any(Option::is_none) {
                unresolved.push(name.to_owned());
            }
            return named;
        }
        match targets.split_first() {
            Some((Some(first), rest)) if rest.iter().all(|t| t.as_ref() == Some(first)) => {
                vec![first.clone()]
            }
            _ => Vec::new(),
        }
    }
}

/// Warns, at load, of the event types a partner is routed but will not be written for because
/// `listed` (its `mappings`) leaves out the kind that writes them: such deliveries are created
/// dead. A deliberate choice is allowed; an oversight should be seen before the first event.
fn warn_of_unwritable(mapping: &crate::mapping::PartnerMapping, listed: &[String]) {
    let partner = &mapping.partner;
    let left_out = |kind: &str| {
        let id = mapping.mapping_id(kind);
        (!listed.contains(&id)).then_some(id)
    };
    if mapping.receives_canonical() {
        if let Some(id) = left_out(crate::mapping::CANONICAL_KIND) {
            tracing::warn!(%partner, "the registry leaves {id} out of its mappings: every event routed to it will be dead-lettered (mapping-not-in-force)");
        }
        return;
    }
    for outbound in mapping.outbound() {
        if let Some(id) = left_out(&outbound.name) {
            tracing::warn!(
                %partner,
                event_type = %outbound.event_type,
                "the registry leaves {id} out of its mappings: {} events routed to it will be dead-lettered (mapping-not-in-force)",
                outbound.event_type
            );
        }
    }
}

/// Whether `text` is an absolute URI, as a certificate's URI subject alternative name is: a
/// scheme, then the rest, with no space or control character.
fn is_uri(text: &str) -> bool {
    !text.chars().any(|c| c.is_whitespace() || c.is_control()) && reqwest::Url::parse(text).is_ok()
}

/// Why a webhook URL cannot be called, if it cannot: it must parse, be `https://`, and name a
/// host. (A URL that does not would fail every attempt, each one retried as if the endpoint
/// were down, until the delivery is dead-lettered an hour later.)
fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err("must be https://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load() -> Registry {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        Registry::load(&root.join("config/registry.toml"), &catalogue, &mappings).unwrap()
    }

    #[test]
    fn the_sample_registry_is_valid_and_covers_every_partner() {
        let registry = load();
        for id in [
            "ma.interieur",
            "sn.consulat.casablanca",
            "ci.ambassade.rabat",
            "ma.dgsn",
            "airline.at",
            "iom.ma",
            "iom.sn",
            "audit.igat",
        ] {
            assert!(registry.partner(id).is_some(), "{id}");
        }
        // IOM Senegal's specification: it reads each canonical event as one JSON document.
        assert_eq!(
            registry.partner("iom.sn").unwrap().delivery,
            Some(Delivery::Amqp {
                cloudevents: CloudEventsMode::Structured
            })
        );
    }

    #[test]
    fn whose_word_an_event_is_follows_the_catalogues_scope() {
        let registry = load();
        let boarding = |carrier: &str| json!({"type": "ma.rva.boarding.confirmed", "data": {"flight": {"carrier": carrier}}});
        assert_eq!(registry.out_of_scope("airline.at", &boarding("AT")), None);
        let (code, message) = registry
            .out_of_scope("airline.at", &boarding("AF"))
            .expect("another carrier's boarding");
        assert_eq!(code, "scope.not_the_operating_airline");
        assert!(message.contains("AF to no partner"), "{message}");
        let issued = |nationality: &str| json!({"type": "ma.rva.lpc.issued", "data": {"holder": {"nationality": nationality}}});
        assert_eq!(
            registry.out_of_scope("sn.consulat.casablanca", &issued("SEN")),
            None
        );
        let (code, message) = registry
            .out_of_scope("ci.ambassade.rabat", &issued("SEN"))
            .expect("another consulate's national");
        assert_eq!(code, "scope.not_the_consulate_of_nationality");
        assert!(message.contains("to sn.consulat.casablanca"), "{message}");
        // No key, no scope to be out of; and a type without a scope has none.
        let unnamed = json!({"type": "ma.rva.lpc.issued", "data": {"holder": {}}});
        assert_eq!(registry.out_of_scope("ci.ambassade.rabat", &unnamed), None);
        let booked = json!({"type": "ma.rva.travel.booked", "data": {"flight": {"carrier": "AF"}}});
        assert_eq!(registry.out_of_scope("iom.ma", &booked), None);
    }

    #[test]
    fn a_routing_table_the_catalogue_reads_must_be_the_registrys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let text = std::fs::read_to_string(root.join("schemas/catalogue.toml")).unwrap();
        let catalogue = Catalogue::parse(
            &text
                .replace(
                    "through = \"airport_country\"",
                    "through = \"airport_city\"",
                )
                .replace(
                    "table = \"airline_by_carrier\"",
                    "table = \"airline_by_operator\"",
                ),
        )
        .unwrap();
        let registry = std::fs::read_to_string(root.join("config/registry.toml")).unwrap();
        let Err(RegistryError::Invalid(problems)) =
            Registry::parse(&registry, &catalogue, &mappings)
        else {
            panic!("a registry without the catalogue's tables is refused");
        };
        for expected in [
            "operating-airline reads routing table airline_by_operator, which this registry has not",
            "iom-of-destination goes through routing table airport_city, which this registry has not",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_ids_of_unregistered_and_refused_certificates_are_reserved() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        for id in [crate::pipeline::UNREGISTERED, crate::pipeline::UNVERIFIED] {
            let text = format!("[[partner]]\nid = \"{id}\"\nrole = \"auditor\"\n");
            match Registry::parse(&text, &catalogue, &mappings) {
                Err(RegistryError::Invalid(problems)) => {
                    assert!(
                        problems.iter().any(|p| p.contains("reserved")),
                        "{id}: {problems:?}"
                    )
                }
                other => panic!("{id} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_partner_ids_are_refused() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        for id in [
            "sha256:00ff",
            "Upper.case",
            "../escape",
            "a..b",
            "-dash",
            "",
        ] {
            let text = format!("[[partner]]\nid = \"{id}\"\nrole = \"auditor\"\n");
            match Registry::parse(&text, &catalogue, &mappings) {
                Err(RegistryError::Invalid(problems)) => assert!(
                    problems.iter().any(|p| p.contains("dotted name")),
                    "{id}: {problems:?}"
                ),
                other => panic!("{id:?} accepted: {other:?}"),
            }
        }
        assert!(is_well_formed_partner_id("sn.consulat.casablanca"));
        assert!(is_well_formed_partner_id("audit.igat"));
    }

    #[test]
    fn a_key_of_the_wrong_type_is_named_with_its_partner() {
        let text = "[[partner]]\nid = \"ma.dgsn\"\nrole = \"border-police\"\n\
                    delivery = { mode = \"webhook\", url = 42 }\n";
        let Err(RegistryError::File { message, .. }) = read_registry_file(text) else {
            panic!("a URL of the wrong type was taken");
        };
        assert_eq!(
            message,
            "partner ma.dgsn: delivery.url: line 4, column 38: invalid type: an integer, \
             expected a string"
        );
    }

    #[test]
    fn an_identity_must_be_a_uri() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        let with = |identity: &str| {
            let text = format!(
                "[[partner]]\nid = \"audit.igat\"\nrole = \"auditor\"\nidentity = \"{identity}\"\n"
            );
            Registry::parse(&text, &catalogue, &mappings)
        };
        for identity in ["", "DIOP Awa", "partner", "urn:partner: x"] {
            match with(identity) {
                Err(RegistryError::Invalid(problems)) => assert!(
                    problems.iter().any(|p| p
                        == "partner audit.igat: identity is not a URI (such as \
                            urn:partner:audit.igat): it is the URI subject alternative name its \
                            certificates carry"),
                    "{identity:?}: {problems:?}"
                ),
                other => panic!("{identity:?} accepted: {other:?}"),
            }
        }
        // The entry is taken (the registry of one auditor still lacks its routing tables).
        for identity in ["urn:partner:audit.igat", "https://igat.example/auditor"] {
            match with(identity) {
                Err(RegistryError::Invalid(problems)) => assert!(
                    !problems.iter().any(|p| p.contains("identity")),
                    "{identity}: {problems:?}"
                ),
                other => panic!("{identity}: {other:?}"),
            }
        }
    }

    /// A self-signed CA certificate named `CN=<name>`, DER.
    fn ca_named(name: &str) -> rustls::pki_types::CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn issuers_of(cas: &[rustls::pki_types::CertificateDer<'static>]) -> Issuers {
        Issuers::new(Path::new("bundle.pem"), cas, &crate::tls::crypto_provider()).unwrap()
    }

    #[test]
    fn each_entry_names_its_ca_when_the_bundle_holds_several() {
        let (a, b) = (ca_named("A"), ca_named("B"));
        let mut registry = load();
        for entry in registry.partners.values_mut() {
            match entry.id.as_str() {
                "ma.interieur" => {}
                "iom.ma" => entry.fingerprints = vec![format!("sha256:{}", "0".repeat(64))],
                "iom.sn" => entry.issuer = Some(crate::tls::fingerprint(&b)),
                _ => entry.issuer = Some("CN=A".into()),
            }
        }
        // One CA: no entry need name it, but an issuer must name it.
        let Err(RegistryError::Invalid(problems)) =
            registry.check_issuers(&issuers_of(std::slice::from_ref(&a)))
        else {
            panic!("a fingerprint of no CA of the bundle was accepted");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].starts_with("the CAs of the bundle (tls.ca), as issuer takes them"),
            "{problems:?}"
        );
        assert!(
            problems[0].starts_with("partner iom.sn: its issuer names no CA of the bundle"),
            "{problems:?}"
        );
        // Two: the unpinned entry without an issuer is named, the pinned one is not.
        let both = issuers_of(&[a.clone(), b.clone()]);
        let Err(RegistryError::Invalid(problems)) = registry.check_issuers(&both) else {
            panic!("two CAs and an entry without its issuer were accepted");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].starts_with("the CAs of the bundle (tls.ca), as issuer takes them"),
            "{problems:?}"
        );
        assert!(
            problems[0].starts_with("partner ma.interieur: the CA bundle (tls.ca) holds 2 CA"),
            "{problems:?}"
        );
        // An issuer that is no CA of the bundle is named, with the bundle's CAs.
        registry.partners.get_mut("ma.interieur").unwrap().issuer = Some("CN=C".into());
        let Err(RegistryError::Invalid(problems)) = registry.check_issuers(&both) else {
            panic!("an issuer that is no CA of the bundle was accepted");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].starts_with("the CAs of the bundle (tls.ca), as issuer takes them"),
            "{problems:?}"
        );
        assert!(
            problems[0] == "partner ma.interieur: its issuer names no CA of the bundle (tls.ca)"
                && problems[1].contains("\"CN=A\" (sha256:"),
            "{problems:?}"
        );
        registry.partners.get_mut("ma.interieur").unwrap().issuer = Some("CN=B".into());
        registry.check_issuers(&both).unwrap();
        // Two CAs of one name (a CA re-keyed) count as two: each entry names one, by the name
        // (either key) or by a fingerprint (that one).
        registry
            .check_issuers(&issuers_of(&[a, ca_named("B"), b]))
            .unwrap();
    }

    /// Two different names that print alike (the printed form does not escape a comma) name
    /// no issuer: the entry must name its CA by fingerprint.
    #[test]
    fn a_printed_name_of_two_different_names_names_no_issuer() {
        let two_attributes = {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Root");
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Y");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().clone()
        };
        let one_attribute = ca_named("Root, O=Y");
        let issuers = issuers_of(&[two_attributes.clone(), one_attribute]);
        assert!(issuers.ambiguous("CN=Root, O=Y"));
        assert!(!issuers.names("CN=Root, O=Y"));
        assert!(issuers.names(&crate::tls::fingerprint(&two_attributes)));
        let mut registry = load();
        for entry in registry.partners.values_mut() {
            entry.issuer = Some(crate::tls::fingerprint(&two_attributes));
        }
        registry.check_issuers(&issuers).unwrap();
        registry.partners.get_mut("ma.interieur").unwrap().issuer = Some("CN=Root, O=Y".into());
        let Err(RegistryError::Invalid(problems)) = registry.check_issuers(&issuers) else {
            panic!("an ambiguous name was accepted");
        };
        assert!(
            problems[0].contains("several different CA names"),
            "{problems:?}"
        );
    }

    #[test]
    fn identifies_by_certificate_and_authorises_by_role() {
        let registry = load();
        let consulate = registry
            .identify(&["urn:partner:sn.consulat.casablanca".into()], "sha256:00")
            .unwrap();
        assert_eq!(consulate.role, "consulate");
        assert_eq!(
            registry
                .identify(&["urn:partner:nobody".into()], "")
                .unwrap_err(),
            AccessError::UnknownIdentity(Unidentified::Unregistered)
        );
        assert_eq!(
            registry.identify(&[], "").unwrap_err(),
            AccessError::UnknownIdentity(Unidentified::NoUri)
        );
        assert_eq!(
            registry
                .identify(&["https://consulat.example".into()], "")
                .unwrap_err(),
            AccessError::UnknownIdentity(Unidentified::NoPartnerUri)
        );
        // Two partners in one certificate: neither, whatever the order.
        for sans in [
            ["urn:partner:iom.ma", "urn:partner:ma.interieur"],
            ["urn:partner:ma.interieur", "urn:partner:iom.ma"],
        ] {
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(
                registry.identify(&sans, "").unwrap_err(),
                AccessError::Ambiguous(vec!["iom.ma".into(), "ma.interieur".into()])
            );
        }
        // The same partner named twice is that partner.
        let twice = [
            "urn:partner:iom.ma".to_owned(),
            "urn:partner:iom.ma".to_owned(),
        ];
        assert_eq!(registry.identify(&twice, "").unwrap().id, "iom.ma");
        assert!(
            registry
                .authorise("sn.consulat.casablanca", "ma.rva.lpc.issued")
                .is_ok()
        );
        assert!(matches!(
            registry.authorise("sn.consulat.casablanca", "ma.rva.boarding.confirmed"),
            Err(AccessError::NotAllowed { .. })
        ));
    }

    #[test]
    fn routes_by_nationality_destination_and_carrier() {
        let registry = load();
        let lpc_request =
            json!({"type": "ma.rva.lpc.requested", "data": {"person": {"nationality": "CIV"}}});
        assert_eq!(
            registry.recipients("ma.interieur", &lpc_request, &[]).0,
            ["ci.ambassade.rabat"]
        );
        let boarded = json!({"type": "ma.rva.boarding.confirmed", "data": {"flight": {"carrier": "AT", "destination": "DSS"}}});
        assert_eq!(
            registry.recipients("airline.at", &boarded, &[]).0,
            ["ma.interieur", "iom.ma", "ma.dgsn", "iom.sn"]
        );
        let booked =
            json!({"type": "ma.rva.travel.booked", "data": {"segments": [{"carrier": "AT"}]}});
        assert_eq!(
            registry.recipients("iom.ma", &booked, &[]).0,
            ["ma.interieur", "ma.dgsn", "airline.at"]
        );
        let unknown =
            json!({"type": "ma.rva.lpc.requested", "data": {"person": {"nationality": "NOR"}}});
        assert_eq!(
            registry.recipients("ma.interieur", &unknown, &[]),
            (vec![], vec!["consulate-of-nationality".to_owned()])
        );
        // The first leg of a connecting journey: the mission of the country where the booking
        // on file ends, not of the airport the leg lands at; with no booking on file, the leg's.
        let first_leg = json!({"type": "ma.rva.boarding.confirmed",
            "data": {"flight": {"carrier": "AT", "destination": "ABJ"}}});
        assert_eq!(
            registry
                .recipients("airline.at", &first_leg, &["DSS".to_owned()])
                .0,
            ["ma.interieur", "iom.ma", "ma.dgsn", "iom.sn"]
        );
        assert_eq!(
            registry.recipients("airline.at", &boarded, &["ABJ".to_owned()]),
            (
                vec!["ma.interieur".into(), "iom.ma".into(), "ma.dgsn".into()],
                vec!["iom-of-destination".to_owned()]
            )
        );
        // A booking changed to another destination: no mission is sure, none is told.
        let changed = ["DSS".to_owned(), "BZV".to_owned()];
        assert_eq!(
            registry.recipients("airline.at", &boarded, &changed).1,
            ["iom-of-destination"]
        );
        assert_eq!(
            registry
                .recipients("airline.at", &boarded, &["DSS".into(), "DKR".into()])
                .0,
            ["ma.interieur", "iom.ma", "ma.dgsn", "iom.sn"]
        );
        // A connection on a carrier that is no partner: the partner airline is informed, and
        // the other is flagged.
        let connecting = json!({"type": "ma.rva.travel.booked",
            "data": {"segments": [{"carrier": "AT"}, {"carrier": "HF"}]}});
        assert_eq!(
            registry.recipients("iom.ma", &connecting, &[]),
            (
                vec![
                    "ma.interieur".to_owned(),
                    "ma.dgsn".to_owned(),
                    "airline.at".to_owned()
                ],
                vec!["operating-airline".to_owned()]
            )
        );
    }

    /// Every problem the registry `text` has, one a line; panics if it loads.
    fn problems_of(text: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        let Err(RegistryError::Invalid(problems)) = Registry::parse(text, &catalogue, &mappings)
        else {
            panic!("accepted")
        };
        problems.join("\n")
    }

    #[test]
    fn refuses_inconsistent_registries() {
        let text = r#"
[[partner]]
id = "sn.consulat.casablanca"
role = "airline"
sends = ["lpc.issued"]
delivery = { mode = "webhook", url = "http://gateway:s3cret@x/hook?token=t0ken" }

[routing]
airline_by_carrier = { AT = "nobody", "Royal Air Maroc" = "nobody" }
consulate_by_nationality = { sen = "sn.consulat.casablanca" }
airport_country = { Dakar = "Senegal" }
"#;
        let all = problems_of(text);
        for needle in [
            "role airline here but consulate",
            "https://",
            "does not allow role airline",
            "nobody is not a registered",
            "iom_morocco",
            r#"airline_by_carrier: "Royal Air Maroc" is not an IATA carrier code"#,
            r#"consulate_by_nationality: "sen" is not an ISO 3166 alpha-3"#,
            r#"airport_country: "Dakar" is not an IATA airport code"#,
            r#"airport_country: "Senegal" is not an ISO 3166 alpha-3"#,
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
        // A URL may carry a password or a token: the problem does not quote it.
        assert!(
            all.contains("partner sn.consulat.casablanca: its webhook URL must be https://"),
            "{all}"
        );
        for secret in ["s3cret", "t0ken"] {
            assert!(!all.contains(secret), "{all}");
        }
    }

    #[test]
    fn a_delivery_takes_the_keys_of_its_mode_only() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        for (delivery, why) in [
            (
                r#"{ mode = "inbox", url = "https://x.example/hook" }"#,
                r#"mode "inbox" takes no `url`"#,
            ),
            (
                r#"{ mode = "amqp", url = "https://x.example/hook" }"#,
                r#"mode "amqp" takes no `url`"#,
            ),
            (r#"{ mode = "webhook" }"#, "needs its `url`"),
            (
                r#"{ mode = "inbox", cloudevents = "structured" }"#,
                r#"mode "inbox" takes no `cloudevents`"#,
            ),
            (
                r#"{ mode = "amqp", cloudevents = "json" }"#,
                "unknown `cloudevents`: it is",
            ),
            (
                r#"{ mode = "push" }"#,
                "unknown delivery `mode`: the modes are",
            ),
            (r#"{ mode = "inbox", urll = "x" }"#, "unknown field `urll`"),
            (
                r#"{ mode = "inbox", url = "https://u:pw-s3cret@x.example/hook?token=t0ken" }"#,
                r#"line 4, column 12: a delivery of mode "inbox" takes no `url`"#,
            ),
            (
                r#""https://u:pw-s3cret@x.example/hook?token=t0ken""#,
                "line 4, column 12: invalid type: a string, expected",
            ),
        ] {
            let text =
                format!("[[partner]]\nid = \"iom.ma\"\nrole = \"iom\"\ndelivery = {delivery}\n");
            let error = Registry::parse(&text, &catalogue, &mappings)
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{delivery}: {error}");
            // The line is not quoted: a URL on it may carry a password or a token.
            for secret in ["s3cret", "t0ken", "x.example"] {
                assert!(!error.contains(secret), "{delivery}: {error}");
            }
        }
    }

    #[test]
    fn a_narrowed_sends_and_the_routing_tables_are_named_in_their_problems() {
        let text = r#"
[[partner]]
id = "sn.consulat.casablanca"
role = "consulate"
sends = ["ma.rva.lpc.issued", "lpc.isued", "boarding.confirmed"]
delivery = { mode = "inbox" }

[routing]
iom_morocco = "iom.mar"
iom_by_destination_country = { SEN = "iom.snn" }
"#;
        let all = problems_of(text);
        for needle in [
            r#"sends lists "ma.rva.lpc.issued": write event types without "ma.rva." ("lpc.issued")"#,
            r#"sends lists "lpc.isued", which is not an event type of the catalogue"#,
            "sends lists boarding.confirmed, which the catalogue does not allow role consulate",
            "routing iom_morocco: iom.mar is not a registered partner",
            "routing iom_by_destination_country: iom.snn is not a registered partner",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
    }

    #[test]
    fn a_type_left_out_of_sends_is_refused_as_such() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        let text = std::fs::read_to_string(root.join("config/registry.toml"))
            .unwrap()
            .replacen(
                "id = \"sn.consulat.casablanca\"\n",
                "id = \"sn.consulat.casablanca\"\nsends = [\"identification.completed\"]\n",
                1,
            );
        let registry = Registry::parse(&text, &catalogue, &mappings).unwrap();
        let refused = registry
            .authorise("sn.consulat.casablanca", "ma.rva.lpc.issued")
            .unwrap_err();
        assert!(matches!(refused, AccessError::NotInSends { .. }));
        assert!(
            refused.to_string().contains("`sends` leaves it out"),
            "{refused}"
        );
        assert!(matches!(
            registry.authorise("sn.consulat.casablanca", "ma.rva.boarding.confirmed"),
            Err(AccessError::NotAllowed { .. })
        ));
    }

    #[test]
    fn a_webhook_url_must_be_one_that_can_be_called() {
        for (url, why) in [
            ("http://dgsn.example/notices", "must be https://"),
            ("https://", "is not a URL"),
            ("notices", "is not a URL"),
        ] {
            let problem = check_webhook_url(url).unwrap_err();
            assert!(problem.contains(why), "{url}: {problem}");
        }
        assert_eq!(
            check_webhook_url("https://dgsn.example:8443/notices"),
            Ok(())
        );
        assert_eq!(check_webhook_url("https://127.0.0.1:8443/notices"), Ok(()));
    }

    #[test]
    fn the_mappings_in_force_are_those_listed_or_every_one_of_the_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        // The sample lists every mapping of each file.
        let registry = load();
        for partner in registry.partners().filter(|p| p.role != "auditor") {
            let defined = mappings.partner(&partner.id).unwrap().mapping_ids();
            assert_eq!(partner.mappings.as_ref(), Some(&defined), "{}", partner.id);
        }
        let text = r#"
[[partner]]
id = "iom.sn"
role = "iom"
mappings = ["iom.sn/arrival-confirmed", "iom.sn/cloudevents"]
delivery = { mode = "inbox" }

[[partner]]
id = "iom.ma"
role = "iom"
delivery = { mode = "inbox" }

[routing]
iom_morocco = "iom.ma"
"#;
        let registry = Registry::parse(text, &catalogue, &mappings).unwrap();
        assert!(registry.mapping_in_force("iom.sn", "iom.sn/arrival-confirmed"));
        assert!(!registry.mapping_in_force("iom.sn", "iom.sn/reintegration-update"));
        // Left out: every mapping of the partner's own file, and no other partner's.
        assert!(registry.mapping_in_force("iom.ma", "iom.ma/case-registered"));
        assert!(!registry.mapping_in_force("iom.ma", "iom.sn/cloudevents"));

        let text = r#"
[[partner]]
id = "iom.sn"
role = "iom"
mappings = ["iom.sn/arrival-confirmed", "iom.ma/case-registered", "iom.sn/nothing"]
delivery = { mode = "inbox" }

[[partner]]
id = "iom.ma"
role = "iom"
mappings = []
delivery = { mode = "inbox" }

[[partner]]
id = "audit.igat"
role = "auditor"
mappings = ["iom.ma/case-registered"]

[routing]
iom_morocco = "iom.ma"
"#;
        let all = problems_of(text);
        for needle in [
            "partner iom.sn: mapping iom.ma/case-registered is not defined by iom.sn.toml",
            "partner iom.sn: mapping iom.sn/nothing is not defined by iom.sn.toml (it defines iom.sn/arrival-confirmed, iom.sn/cloudevents, iom.sn/reintegration-update)",
            "partner iom.ma: mappings lists no mapping",
            "partner audit.igat: an auditor sends and receives no events",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
    }
}
