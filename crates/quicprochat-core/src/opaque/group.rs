//! The key-exchange group of our OPAQUE suite: opaque-ke's Ristretto255, with public keys
//! derived from the precomputed basepoint table.
//!
//! opaque-ke 3 derives a public key as `basepoint * sk`, a variable-base multiplication, where
//! curve25519-dalek's `RistrettoPoint::mul_base` uses its precomputed table for the same point.
//! A login derives three public keys (the server's static key, an ephemeral key on each side)
//! and the client's static key as well. Every other operation, and so every byte on the wire
//! and in a stored record, is opaque-ke's own.

use curve25519_dalek::ristretto::RistrettoPoint;
use opaque_ke::errors::InternalError;
use opaque_ke::key_exchange::group::KeGroup;
use opaque_ke::key_exchange::group::ristretto255::Ristretto255;
use rand_core::{CryptoRng, RngCore};
use sha2::digest::core_api::BlockSizeUser;
use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::{IsLess, IsLessOrEqual, U256};
use sha2::digest::{FixedOutput, HashMarker};

/// Ristretto255 for the key exchange (see the module documentation).
pub(super) struct KeRistretto255;

impl KeGroup for KeRistretto255 {
    type Pk = <Ristretto255 as KeGroup>::Pk;
    type PkLen = <Ristretto255 as KeGroup>::PkLen;
    type Sk = <Ristretto255 as KeGroup>::Sk;
    type SkLen = <Ristretto255 as KeGroup>::SkLen;

    fn serialize_pk(pk: Self::Pk) -> GenericArray<u8, Self::PkLen> {
        Ristretto255::serialize_pk(pk)
    }

    fn deserialize_pk(bytes: &[u8]) -> Result<Self::Pk, InternalError> {
        Ristretto255::deserialize_pk(bytes)
    }

    fn random_sk<R: RngCore + CryptoRng>(rng: &mut R) -> Self::Sk {
        Ristretto255::random_sk(rng)
    }

    fn hash_to_scalar<H>(input: &[&[u8]], dst: &[&[u8]]) -> Result<Self::Sk, InternalError>
    where
        H: BlockSizeUser + Default + FixedOutput + HashMarker,
        H::OutputSize: IsLess<U256> + IsLessOrEqual<H::BlockSize>,
    {
        Ristretto255::hash_to_scalar::<H>(input, dst)
    }

    fn is_zero_scalar(scalar: Self::Sk) -> subtle::Choice {
        Ristretto255::is_zero_scalar(scalar)
    }

    fn public_key(sk: Self::Sk) -> Self::Pk {
        RistrettoPoint::mul_base(&sk)
    }

    fn diffie_hellman(pk: Self::Pk, sk: Self::Sk) -> GenericArray<u8, Self::PkLen> {
        Ristretto255::diffie_hellman(pk, sk)
    }

    fn serialize_sk(sk: Self::Sk) -> GenericArray<u8, Self::SkLen> {
        Ristretto255::serialize_sk(sk)
    }

    fn deserialize_sk(bytes: &[u8]) -> Result<Self::Sk, InternalError> {
        Ristretto255::deserialize_sk(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::scalar::Scalar;
    use rand::rngs::OsRng;

    #[test]
    fn public_keys_match_opaque_kes_derivation() {
        for _ in 0..64 {
            let sk: Scalar = Ristretto255::random_sk(&mut OsRng);
            let ours = KeRistretto255::serialize_pk(KeRistretto255::public_key(sk));
            let theirs = Ristretto255::serialize_pk(Ristretto255::public_key(sk));
            assert_eq!(ours, theirs);
        }
    }
}
