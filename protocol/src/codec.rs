//! The one bincode configuration family and the size-limited decode every wire type uses.
//!
//! All encodings are bincode 2, little-endian, fixed-width integers (so a value has exactly one
//! encoding), with a hard byte limit that bincode also applies to every length prefix before
//! allocating. Decoding refuses input over the limit before parsing, and any trailing bytes.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};

use crate::error::DecodeError;

/// The configuration for messages of at most `N` bytes.
pub(crate) type Config<const N: usize> = Configuration<LittleEndian, Fixint, Limit<N>>;

/// The configuration for messages of at most `N` bytes.
pub(crate) fn config<const N: usize>() -> Config<N> {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<N>()
}

/// Encodes `v`; empty only if it does not fit in `N` bytes (callers validate sizes first).
pub(crate) fn encode<T: bincode::Encode, const N: usize>(v: &T) -> Vec<u8> {
    bincode::encode_to_vec(v, config::<N>()).unwrap_or_default()
}

/// The length of `encode::<T, N>(v)`, counted without building the bytes (a caller that only
/// charges a message's size, like the simulator's network, needs no buffer).
pub(crate) fn encoded_len<T: bincode::Encode, const N: usize>(v: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::encode_into_writer(v, &mut size, config::<N>()) {
        Ok(()) => size.bytes_written,
        // `encode` gives no bytes for a value it cannot encode.
        Err(_) => 0,
    }
}

/// Decodes exactly one `T` from `bytes` of at most `N` bytes.
pub(crate) fn decode<T: bincode::Decode<()>, const N: usize>(
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if bytes.len() > N {
        return Err(DecodeError::TooLarge {
            got: bytes.len(),
            limit: N,
        });
    }
    let (v, used): (T, usize) = bincode::decode_from_slice(bytes, config::<N>())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    Ok(v)
}

/// `encode`/`decode` methods for a wire type with a byte limit.
macro_rules! limited_codec {
    ($t:ty, $limit:expr) => {
        impl $t {
            /// Encodes (canonical bytes).
            pub fn encode(&self) -> Vec<u8> {
                $crate::codec::encode::<Self, { $limit }>(self)
            }

            /// `self.encode().len()`, without building the bytes.
            pub fn encoded_len(&self) -> usize {
                $crate::codec::encoded_len::<Self, { $limit }>(self)
            }

            /// Decodes, refusing input over the type's byte limit and trailing bytes.
            pub fn decode(bytes: &[u8]) -> Result<Self, $crate::error::DecodeError> {
                $crate::codec::decode::<Self, { $limit }>(bytes)
            }
        }
    };
}
pub(crate) use limited_codec;

#[cfg(test)]
mod tests {
    use crate::{SyncRequest, SyncResponse};

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let requests = [
            SyncRequest::Digest {
                root: [7; 32],
                buckets: vec![1, 2, 3],
            },
            SyncRequest::Fetch {
                names: vec!["a.b".into(), "some-longer-label.zone".into()],
            },
        ];
        for r in &requests {
            assert_eq!(r.encoded_len(), r.encode().len(), "{r:?}");
            assert!(r.encoded_len() > 0);
        }
        let resp = SyncResponse::InSync;
        assert_eq!(resp.encoded_len(), resp.encode().len());
    }
}
