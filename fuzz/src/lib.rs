//! Shared set-up for the fuzz targets in `fuzz_targets/`.
//!
//! The mappings folder is loaded once per process (it is the slow part: schemas, code lists,
//! every partner file) and then every input is fed to the partners of one format.

use passerelle::mapping::{Decoded, Format, MappingSet, PartnerMapping};
use std::path::Path;
use std::sync::OnceLock;

/// The crate's `mappings/` folder, whatever the working directory.
pub const MAPPINGS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../mappings");

/// The mapping set, loaded on first use. A folder that does not load is a configuration
/// problem, not a fuzzing finding: the message says so and lists every diagnostic.
pub fn mappings() -> &'static MappingSet {
    static SET: OnceLock<MappingSet> = OnceLock::new();
    SET.get_or_init(|| match MappingSet::load(Path::new(MAPPINGS_DIR)) {
        Ok(set) => set,
        Err(diagnostics) => {
            let list = diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ");
            panic!("SETUP ERROR, not a fuzzing finding: {MAPPINGS_DIR} does not load:\n  {list}");
        }
    })
}

/// Every partner whose inbound format is one of `formats`, in id order. Panics (at set-up) if
/// there is none, so that a target never silently fuzzes nothing.
pub fn partners(formats: &[Format]) -> Vec<&'static PartnerMapping> {
    let found: Vec<_> = mappings()
        .partners()
        .filter(|p| formats.contains(&p.format))
        .collect();
    assert!(
        !found.is_empty(),
        "SETUP ERROR: no partner in {MAPPINGS_DIR} sends {formats:?}"
    );
    found
}

/// Decodes `bytes` as sent by `partner`. Any panic in here is a finding. Besides decoding, it
/// exercises what the gateway does next with the result: the error's message and class, the
/// event's canonical JSON (which must be JSON), and writing the event for every recipient.
pub fn decode(partner: &PartnerMapping, bytes: &[u8]) {
    match partner.decode(bytes) {
        Err(error) => {
            let _ = error.class();
            let _ = error.to_string();
        }
        Ok(Decoded::Ignored { .. }) => {}
        Ok(Decoded::Event(event)) => {
            let canonical = event.to_canonical_json();
            if let Err(error) = serde_json::from_slice::<serde_json::Value>(&canonical) {
                panic!(
                    "{}: the canonical JSON of a decoded event is not JSON: {error}",
                    event.mapping_id
                );
            }
            for recipient in mappings().partners() {
                let _ = recipient.encode(&event.event);
            }
        }
    }
}
