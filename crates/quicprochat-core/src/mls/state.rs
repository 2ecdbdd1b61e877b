//! Snapshot format of a client's MLS storage ([`super::MlsClient::export_state`]).
//!
//! openmls keeps everything (groups, pending commits, proposals, key package
//! private keys) as key/value pairs. A snapshot is, version 1:
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `"QPCS"` |
//! | 1 | version, `1` |
//! | 32 | identity public key of the owner |
//! | 4 | entry count `n`, big-endian |
//! | … | `n` entries, sorted by key: `u32be(len) key u32be(len) value` |
//!
//! Sorting makes the encoding deterministic. The snapshot holds private keys:
//! callers seal it (see [`crate::keystore`]) before it touches a disk.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::error::CoreError;

/// Magic bytes opening a state snapshot.
pub const STATE_MAGIC: [u8; 4] = *b"QPCS";
/// Current snapshot version.
pub const STATE_VERSION: u8 = 1;

const FORMAT: &str = "MLS state snapshot";
const HEADER_LEN: usize = 4 + 1 + 32 + 4;

/// Encodes storage entries owned by `identity_key`.
pub(crate) fn encode(
    identity_key: &[u8; 32],
    values: &HashMap<Vec<u8>, Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + entries_len(values)));
    out.extend_from_slice(&STATE_MAGIC);
    out.push(STATE_VERSION);
    out.extend_from_slice(identity_key);
    encode_entries(&mut out, values)?;
    Ok(out)
}

/// Bytes [`encode_entries`] will write for `values`.
pub(crate) fn entries_len(values: &HashMap<Vec<u8>, Vec<u8>>) -> usize {
    4 + values.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
}

/// Appends `u32be(count)` and the entries sorted by key, each
/// `u32be(len) key u32be(len) value`: the body of a snapshot, shared with
/// [`crate::public_group::ChannelTracker::to_bytes`].
pub(crate) fn encode_entries(out: &mut Vec<u8>, values: &HashMap<Vec<u8>, Vec<u8>>) -> Result<(), CoreError> {
    let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.extend_from_slice(&len_u32(entries.len())?.to_be_bytes());
    for (key, value) in entries {
        out.extend_from_slice(&len_u32(key.len())?.to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&len_u32(value.len())?.to_be_bytes());
        out.extend_from_slice(value);
    }
    Ok(())
}

/// Decodes a snapshot, checking that it belongs to `identity_key`.
pub(crate) fn decode(identity_key: &[u8; 32], bytes: &[u8]) -> Result<HashMap<Vec<u8>, Vec<u8>>, CoreError> {
    let mut reader = Reader { rest: bytes, format: FORMAT };
    if reader.take(4)? != STATE_MAGIC {
        return Err(CoreError::BadMagic { format: FORMAT });
    }
    let version = reader.take(1)?[0];
    if version != STATE_VERSION {
        return Err(CoreError::UnsupportedVersion { format: FORMAT, version });
    }
    if reader.take(32)? != identity_key.as_slice() {
        return Err(CoreError::StateIdentityMismatch);
    }
    decode_entries(reader.rest, FORMAT)
}

/// Decodes what [`encode_entries`] wrote, which must fill `bytes` exactly.
/// `format` names the enclosing format in [`CoreError::Truncated`].
pub(crate) fn decode_entries(bytes: &[u8], format: &'static str) -> Result<HashMap<Vec<u8>, Vec<u8>>, CoreError> {
    let mut reader = Reader { rest: bytes, format };
    // Every entry takes at least 8 bytes: refuse counts the input cannot hold
    // before reserving anything.
    let count = usize::try_from(reader.u32()?)
        .ok()
        .filter(|&count| count <= reader.rest.len() / 8)
        .ok_or(CoreError::MalformedState { reason: "entry count exceeds snapshot size" })?;
    let mut values = HashMap::with_capacity(count);
    let mut previous: Option<&[u8]> = None;
    for _ in 0..count {
        let key_len = reader.u32()?;
        let key = reader.take_len(key_len)?;
        let value_len = reader.u32()?;
        let value = reader.take_len(value_len)?;
        if previous.is_some_and(|previous| previous >= key) {
            return Err(CoreError::MalformedState { reason: "entries not strictly sorted" });
        }
        previous = Some(key);
        values.insert(key.to_vec(), value.to_vec());
    }
    if !reader.rest.is_empty() {
        return Err(CoreError::MalformedState { reason: "trailing bytes" });
    }
    Ok(values)
}

fn len_u32(len: usize) -> Result<u32, CoreError> {
    u32::try_from(len).map_err(|_| CoreError::MalformedState { reason: "entry larger than 4 GiB" })
}

struct Reader<'a> {
    rest: &'a [u8],
    format: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CoreError> {
        if self.rest.len() < n {
            return Err(CoreError::Truncated { format: self.format });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn take_len(&mut self, n: u32) -> Result<&'a [u8], CoreError> {
        let n = usize::try_from(n).map_err(|_| CoreError::Truncated { format: self.format })?;
        self.take(n)
    }

    fn u32(&mut self) -> Result<u32, CoreError> {
        let mut array = [0u8; 4];
        array.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HashMap<Vec<u8>, Vec<u8>> {
        HashMap::from([(b"b".to_vec(), b"2".to_vec()), (b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), Vec::new())])
    }

    #[test]
    fn roundtrip_is_deterministic() {
        let key = [1u8; 32];
        let encoded = encode(&key, &sample()).unwrap();
        assert_eq!(encoded.as_slice(), encode(&key, &sample()).unwrap().as_slice());
        assert_eq!(decode(&key, &encoded).unwrap(), sample());
        // Golden layout of the first entry.
        assert_eq!(&encoded[..5], b"QPCS\x01");
        assert_eq!(&encoded[37..41], &3u32.to_be_bytes());
        assert_eq!(&encoded[41..50], b"\0\0\0\x01a\0\0\0\x01");
    }

    #[test]
    fn refuses_malformed_snapshots() {
        let key = [1u8; 32];
        let encoded = encode(&key, &sample()).unwrap();
        assert!(matches!(decode(&[2u8; 32], &encoded), Err(CoreError::StateIdentityMismatch)));
        assert!(matches!(decode(&key, &encoded[..encoded.len() - 1]), Err(CoreError::Truncated { .. })));
        let mut huge_count = encoded.to_vec();
        huge_count[37..41].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&key, &huge_count), Err(CoreError::MalformedState { .. })));
        let mut version = encoded.to_vec();
        version[4] = 2;
        assert!(matches!(decode(&key, &version), Err(CoreError::UnsupportedVersion { version: 2, .. })));
        let mut trailing = encoded.to_vec();
        trailing.push(0);
        assert!(matches!(decode(&key, &trailing), Err(CoreError::MalformedState { .. })));
    }
}
