//! Passerelle: the exchange gateway of Morocco's assisted voluntary return programme.
//!
//! The crate is organised along the path a message takes. Each module owns one thing:
#![forbid(unsafe_code)]

pub mod audit; // the signed, tamper-evident audit log (C2SP tlog-tiles)
pub mod canonical; // the canonical model: CloudEvents envelope, catalogue, schemas, JCS
pub mod mapping; // the mapping language: native formats to canonical events and back
pub mod pipeline; // the one ingest path shared by every transport
pub mod registry; // partners, identities, permissions, routing tables
pub mod tls; // mutual TLS: rustls configs, certificate identity, CRLs
