//! Length-bucket padding of application messages, applied inside the MLS
//! ciphertext so the server sees only the bucket, not the exact length.
//!
//! The plaintext is followed by one `0x80` byte and then zero bytes up to the
//! bucket size (ISO/IEC 7816-4 padding). Buckets are powers of two from
//! 256 bytes to 64 KiB; above that, multiples of 64 KiB.

use crate::error::CoreError;

const MARKER: u8 = 0x80;
const SMALLEST_BUCKET: usize = 256;
const LARGE_STEP: usize = 64 * 1024;

/// The padded length for a plaintext of `len` bytes.
pub(crate) fn bucket_len(len: usize) -> usize {
    let needed = len.saturating_add(1);
    if needed <= LARGE_STEP {
        needed.next_power_of_two().max(SMALLEST_BUCKET)
    } else {
        needed.div_ceil(LARGE_STEP).saturating_mul(LARGE_STEP)
    }
}

/// Pads `plaintext` to its bucket.
pub(crate) fn pad(plaintext: &[u8]) -> Vec<u8> {
    let mut padded = Vec::with_capacity(bucket_len(plaintext.len()));
    padded.extend_from_slice(plaintext);
    padded.push(MARKER);
    padded.resize(bucket_len(plaintext.len()), 0);
    padded
}

/// Removes the padding added by [`pad`].
pub(crate) fn unpad(mut padded: Vec<u8>) -> Result<Vec<u8>, CoreError> {
    let marker_at = padded.iter().rposition(|&byte| byte != 0).ok_or(CoreError::InvalidPadding)?;
    if padded[marker_at] != MARKER {
        return Err(CoreError::InvalidPadding);
    }
    padded.truncate(marker_at);
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_len(0), 256);
        assert_eq!(bucket_len(255), 256);
        assert_eq!(bucket_len(256), 512);
        assert_eq!(bucket_len(65_535), 65_536);
        assert_eq!(bucket_len(65_536), 131_072);
        assert_eq!(bucket_len(200_000), 262_144);
    }

    #[test]
    fn roundtrip() {
        for len in [0, 1, 255, 256, 1000, 70_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let padded = pad(&plaintext);
            assert_eq!(padded.len(), bucket_len(len));
            assert_eq!(unpad(padded).unwrap(), plaintext);
        }
        // Trailing zeros in the plaintext survive.
        assert_eq!(unpad(pad(&[1, 0, 0])).unwrap(), vec![1, 0, 0]);
    }

    #[test]
    fn malformed_padding() {
        assert!(matches!(unpad(vec![0; 16]), Err(CoreError::InvalidPadding)));
        assert!(matches!(unpad(vec![1, 2, 0]), Err(CoreError::InvalidPadding)));
        assert!(matches!(unpad(Vec::new()), Err(CoreError::InvalidPadding)));
    }
}
