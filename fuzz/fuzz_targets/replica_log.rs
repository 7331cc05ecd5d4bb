//! Fuzzes what a node reads back from its replica log at start-up (`dpin_node::replica_log`):
//! the frames of a log file a crash may have torn or a disk damaged
//! (`replica_log::decode_frames`), and each frame's entry through the store's entry decoder
//! (`dpin_node::store::decode_stored_entry`, also what every redb value goes through at load).
//! Never panics; the whole frames re-encode to exactly the input's prefix they came from, and
//! an input that is not torn is all whole frames.
#![no_main]

use dpin_node::replica_log::{decode_frames, encode_frames};
use dpin_node::store::decode_stored_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = decode_frames(data);
    let again = encode_frames(&frames.entries).expect("decoded frames re-encode");
    assert_eq!(&data[..again.len()], &again[..], "frames re-encode to the input");
    if !frames.torn {
        assert_eq!(again.len(), data.len(), "nothing after the last whole frame");
    }
    for (name, entry) in &frames.entries {
        let _ = decode_stored_entry(name, entry);
    }
    // The entry decoder alone, on the raw input (a damaged redb value).
    let _ = decode_stored_entry("n.zone", data);
});
