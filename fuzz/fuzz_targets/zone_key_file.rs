//! Fuzzes the zone key file parser (`ZoneKey::from_key_file`, which reads files a user points
//! the CLI at) and the zone id text parser (`ZoneId::from_str`, fed by the API, DNS and CLI):
//! never panic; a parsed key file re-serialises to a file that parses to the same key; a
//! parsed zone id prints back to the same id (case folded) and is never a weak key.
#![no_main]

use dpin_protocol::{ZoneId, ZoneKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = ZoneKey::from_key_file(text) {
        let again = ZoneKey::from_key_file(&key.to_key_file()).expect("own key file parses");
        assert_eq!(again.seed(), key.seed());
    }
    if let Ok(zone) = text.parse::<ZoneId>() {
        assert_eq!(zone.to_string(), text.to_ascii_lowercase());
        assert_eq!(zone.check(), Ok(()), "a parsed zone id is a weak key");
    }
});
