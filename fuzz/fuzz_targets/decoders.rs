//! The document decoders on arbitrary UTF-8: the whole input as an IATA boarding pass
//! (`bcbp::decode`), and its lines as an ICAO machine-readable zone (`mrz::decode`). Both must
//! give a value or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::mapping::{bcbp, mrz};

fuzz_target!(|text: &str| {
    if let Err(error) = bcbp::decode(text) {
        let _ = error.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    if let Err(error) = mrz::decode(&lines) {
        let _ = error.to_string();
    }
});
