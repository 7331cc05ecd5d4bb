//! Fuzzes `BlobRequest::decode` and `BlobResponse::decode` (chunk and index messages, up to
//! 4 MiB + framing): never panic; whatever decodes re-encodes to exactly the input. The
//! signed manifest a `PutIndex` carries goes through the record decoder, validation and the
//! manifest/index comparison; index entries are read without panicking. The in-place chunk
//! readers (`put_chunk_ref`, `chunk_ref`) accept exactly what the decoders decode as those
//! variants, with the same fields.
#![no_main]

use dpin_protocol::blob::{
    chunk_ref, held_bytes, index_entry, manifest_matches_index, put_chunk_ref, root_of,
    BlobRequest, BlobResponse,
};
use dpin_protocol::{Content, Freshness, SignedRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = match BlobRequest::decode(data) {
        Ok(BlobRequest::PutChunk { root, i, data }) => Some((root, i, data)),
        _ => None,
    };
    let in_place = put_chunk_ref(data).map(|c| (c.root, c.i, c.data.to_vec()));
    assert_eq!(in_place, decoded, "put_chunk_ref disagrees with decode");
    let decoded = match BlobResponse::decode(data) {
        Ok(BlobResponse::Chunk { data }) => Some(data),
        _ => None,
    };
    assert_eq!(
        chunk_ref(data).map(<[u8]>::to_vec),
        decoded,
        "chunk_ref disagrees with decode"
    );
    if let Ok(request) = BlobRequest::decode(data) {
        assert_eq!(
            request.encode(),
            data,
            "request decode/encode is not a round trip"
        );
        if let BlobRequest::PutIndex {
            root,
            size,
            chunk_size,
            index,
            manifest,
        } = &request
        {
            let _ = root_of(index);
            let _ = index_entry(index, 0);
            let _ = index_entry(index, u32::MAX);
            if let Ok(r) = SignedRecord::decode(manifest) {
                let _ = r.validate(1_760_832_000_000, Freshness::Replicate);
                if let Content::BlobManifest(m) = &r.body.content {
                    let _ = manifest_matches_index(m, root, *size, *chunk_size, index.len());
                    let _ = held_bytes(m.chunks, m.chunk_size, m.size);
                }
            }
        }
    }
    if let Ok(response) = BlobResponse::decode(data) {
        assert_eq!(
            response.encode(),
            data,
            "response decode/encode is not a round trip"
        );
    }
});
