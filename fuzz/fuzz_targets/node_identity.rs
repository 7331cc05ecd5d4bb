//! Fuzzes the node identity file decoder (`dpin_node::identity::decode_identity`, libp2p's
//! protobuf keypair encoding read from the data dir): never panics; a decoded identity
//! re-encodes to bytes that decode to the same peer id.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/identity");
    if let Ok(kp) = dpin_node::identity::decode_identity(data, path) {
        let bytes = kp
            .to_protobuf_encoding()
            .expect("a decoded identity encodes");
        let again = dpin_node::identity::decode_identity(&bytes, path).expect("round trip");
        assert_eq!(again.public().to_peer_id(), kp.public().to_peer_id());
    }
});
