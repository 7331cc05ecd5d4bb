//! Fuzzes `BlobRequest::decode` and `BlobResponse::decode` (chunk and index messages, up to
//! 4 MiB + framing): never panic; whatever decodes re-encodes to exactly the input.
#![no_main]

use dpin_protocol::blob::{BlobRequest, BlobResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = BlobRequest::decode(data) {
        assert_eq!(request.encode(), data, "request decode/encode is not a round trip");
    }
    if let Ok(response) = BlobResponse::decode(data) {
        assert_eq!(response.encode(), data, "response decode/encode is not a round trip");
    }
});
