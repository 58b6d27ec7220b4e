//! The canonical model: the CloudEvents envelope, the event catalogue, schema validation and
//! deterministic serialisation.
//!
//! Every partner message becomes one canonical event. The JSON Schemas in `schemas/` are the
//! authority on its shape; this module compiles them once and validates against them.

pub mod catalogue;
pub mod jcs;
pub mod schema;
pub mod text;

pub use catalogue::{Catalogue, TYPE_PREFIX, type_name};
pub use schema::{SchemaSet, Violation};

/// The CloudEvents `source` of a partner: `urn:partner:<partner id>`.
pub fn partner_source(partner_id: &str) -> String {
    format!("urn:partner:{partner_id}")
}
