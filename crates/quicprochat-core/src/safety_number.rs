//! Safety numbers: 60 digits two users compare to check that each holds the
//! other's real identity key.
//!
//! The construction follows libsignal's displayable fingerprint, with our own
//! domain label:
//!
//! 1. For each party, `h = SHA-512(LABEL ‖ identity_key ‖ username)`, where
//!    `LABEL` is the 20 ASCII bytes `"qpc/v1/safety-number"`, the key is the
//!    32-byte Ed25519 identity key and the username is its UTF-8 bytes (the
//!    canonical, case-folded form the server uses). Label and key have fixed
//!    lengths, so the input is unambiguous.
//! 2. [`SAFETY_NUMBER_ITERATIONS`] times: `h = SHA-512(h ‖ identity_key)`.
//! 3. The first 30 bytes of `h` become 30 digits: each 5-byte chunk, read as
//!    a big-endian integer, modulo 100 000, written as 5 decimal digits.
//! 4. The two parties' 30-digit halves are ordered (the smaller string
//!    first) and concatenated, so both sides compute the same 60 digits
//!    whichever of them is "local".
//!
//! Each half carries about 99.6 bits (30 decimal digits), and the iterations
//! multiply the cost of every attempt to find a second key matching a given
//! half by 5200, as in libsignal. Shown as 12 groups of 5 digits. Safety
//! numbers are public: they may be shown, logged or sent.

use std::fmt;

use sha2::{Digest, Sha512};

use crate::mls::MemberInfo;

/// Domain label hashed before each party's key and username.
const LABEL: &[u8] = b"qpc/v1/safety-number";
/// How many extra SHA-512 rounds each half takes.
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5200;
/// Number of digits in a safety number.
pub const SAFETY_NUMBER_DIGITS: usize = 60;
/// Digits per displayed group.
const GROUP_LEN: usize = 5;
/// Hash bytes that become one party's 30 digits.
const HALF_BYTES: usize = 30;

/// A 60-digit safety number for a pair of identities.
///
/// Equal on both sides: `compute(a, b) == compute(b, a)`. `Display` shows 12
/// groups of 5 digits separated by spaces.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber {
    digits: String,
}

impl SafetyNumber {
    /// The safety number of two identities, each given by its canonical
    /// username and 32-byte identity key. Argument order does not matter.
    pub fn compute(
        local_username: &str,
        local_identity_key: &[u8; 32],
        remote_username: &str,
        remote_identity_key: &[u8; 32],
    ) -> Self {
        let local = half(local_username, local_identity_key);
        let remote = half(remote_username, remote_identity_key);
        let (first, second) = if local <= remote { (local, remote) } else { (remote, local) };
        Self { digits: first + &second }
    }

    /// The safety number of two group members, from their credentials.
    pub fn for_members(local: &MemberInfo, remote: &MemberInfo) -> Self {
        Self::compute(&local.username, &local.identity_key, &remote.username, &remote.identity_key)
    }

    /// The 60 digits without separators.
    pub fn as_str(&self) -> &str {
        &self.digits
    }

    /// The 12 groups of 5 digits, in display order.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        (0..SAFETY_NUMBER_DIGITS / GROUP_LEN).map(|group| &self.digits[group * GROUP_LEN..(group + 1) * GROUP_LEN])
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, group) in self.groups().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(group)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SafetyNumber").field(&self.digits).finish()
    }
}

/// One party's 30 digits (steps 1–3 of the module docs).
fn half(username: &str, identity_key: &[u8; 32]) -> String {
    let mut hash = Sha512::new().chain_update(LABEL).chain_update(identity_key).chain_update(username).finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new().chain_update(hash).chain_update(identity_key).finalize();
    }
    let mut digits = String::with_capacity(SAFETY_NUMBER_DIGITS / 2);
    for chunk in hash[..HALF_BYTES].chunks_exact(5) {
        let value = chunk.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        digits.push_str(&format!("{:05}", value % 100_000));
    }
    digits
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// Known answers computed independently of this code from the module
    /// docs' description.
    const VECTORS: &str = include_str!("../tests/vectors/safety_numbers.json");

    #[derive(Deserialize)]
    struct Vector {
        local_username: String,
        local_identity_key: String,
        remote_username: String,
        remote_identity_key: String,
        safety_number: String,
    }

    fn key(text: &str) -> [u8; 32] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    #[test]
    fn known_answers() {
        let vectors: Vec<Vector> = serde_json::from_str(VECTORS).unwrap();
        assert!(vectors.len() >= 3);
        for vector in vectors {
            let local_key = key(&vector.local_identity_key);
            let remote_key = key(&vector.remote_identity_key);
            let number =
                SafetyNumber::compute(&vector.local_username, &local_key, &vector.remote_username, &remote_key);
            assert_eq!(number.to_string(), vector.safety_number);
            let reverse =
                SafetyNumber::compute(&vector.remote_username, &remote_key, &vector.local_username, &local_key);
            assert_eq!(reverse, number);
        }
    }

    #[test]
    fn same_on_both_sides_and_different_for_another_key() {
        let alice = [1u8; 32];
        let bob = [2u8; 32];
        let mallory = [3u8; 32];
        let alice_view = SafetyNumber::compute("alice", &alice, "bob", &bob);
        let bob_view = SafetyNumber::compute("bob", &bob, "alice", &alice);
        assert_eq!(alice_view, bob_view);
        assert_eq!(alice_view.as_str().len(), SAFETY_NUMBER_DIGITS);
        assert!(alice_view.as_str().bytes().all(|byte| byte.is_ascii_digit()));
        assert_eq!(alice_view.groups().count(), 12);
        assert_eq!(alice_view.to_string().len(), SAFETY_NUMBER_DIGITS + 11);

        // Mallory in the middle: bob's key replaced.
        assert_ne!(SafetyNumber::compute("alice", &alice, "bob", &mallory), alice_view);
        // Same key, another username.
        assert_ne!(SafetyNumber::compute("alice", &alice, "bobby", &bob), alice_view);
    }

    #[test]
    fn for_members_matches_compute() {
        let member = |username: &str, key: [u8; 32]| MemberInfo {
            username: username.to_owned(),
            device_id: crate::ids::device_id_for_key(&key),
            identity_key: key,
            leaf_index: 0,
        };
        let alice = member("alice", [7u8; 32]);
        let bob = member("bob", [8u8; 32]);
        assert_eq!(
            SafetyNumber::for_members(&alice, &bob),
            SafetyNumber::compute("alice", &[7u8; 32], "bob", &[8u8; 32])
        );
    }
}
