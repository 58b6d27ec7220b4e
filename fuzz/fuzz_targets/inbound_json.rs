//! The JSON inbound path: every byte string, as sent by every partner whose format is JSON or
//! canonical CloudEvents JSON (`PartnerMapping::decode`), must decode or give a `DecodeError`,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::mapping::{Format, PartnerMapping};
use std::sync::OnceLock;

static PARTNERS: OnceLock<Vec<&'static PartnerMapping>> = OnceLock::new();

fuzz_target!(
    init: {
        PARTNERS.get_or_init(|| passerelle_fuzz::partners(&[Format::Json, Format::Cloudevents]));
    },
    |data: &[u8]| {
        for partner in PARTNERS.get().expect("initialised") {
            passerelle_fuzz::decode(partner, data);
        }
    }
);
