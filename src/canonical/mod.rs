//! The canonical model: the CloudEvents envelope, the event catalogue, schema validation and
//! deterministic serialisation.
//!
//! Every partner message becomes one canonical event. The JSON Schemas in `schemas/` are the
//! authority on its shape; this module compiles them once and validates against them.

pub mod catalogue;
pub mod jcs;
pub mod schema;
pub mod text;

pub use catalogue::{Catalogue, CatalogueError, RoutedRecipient, TYPE_PREFIX, type_name};
pub use schema::{SchemaSet, Violation};

/// Whether `id` is a programme case id as the canonical schema writes it, `RVA-YYYY-NNNNNN`
/// (`schemas/defs.schema.json`, `case_id`), capitals included.
pub fn is_case_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 15
        && id.starts_with("RVA-")
        && bytes[4..8].iter().all(u8::is_ascii_digit)
        && bytes[8] == b'-'
        && bytes[9..].iter().all(u8::is_ascii_digit)
}

/// The CloudEvents `source` of a partner: `urn:partner:<partner id>`.
pub fn partner_source(partner_id: &str) -> String {
    format!("urn:partner:{partner_id}")
}
