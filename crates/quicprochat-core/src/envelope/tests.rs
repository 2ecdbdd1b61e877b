//! Tests of the hybrid envelope, with known answers from
//! `tests/vectors/`:
//! - `xwing.json`: the X-Wing KEM vectors of draft-connolly-cfrg-xwing-kem
//!   (github.com/dconnolly/draft-connolly-cfrg-xwing-kem, `spec/test-vectors.json`
//!   at 9b6ce9e614811dba8d46841052f3883cbc4c1a65), copied unchanged;
//! - `hpke-rfc9180-a21.json`: RFC 9180 appendix A.2.1, the HPKE key schedule
//!   and ChaCha20-Poly1305 context of our KDF/AEAD pair;
//! - `hybrid-envelope-v1.json`: an envelope of our own from fixed inputs,
//!   pinning the format; it was reproduced outside hpke-rs (RFC 9180 key
//!   schedule with Python's `hmac`, ChaCha20-Poly1305 from pyca/cryptography).

use hpke_rs::HpkePublicKey;
use libcrux_kem::{Ct, PrivateKey};
use rand::rngs::OsRng;
use serde_json::Value;

use super::*;

const XWING_VECTORS: &str = include_str!("../../tests/vectors/xwing.json");
const HPKE_VECTOR: &str = include_str!("../../tests/vectors/hpke-rfc9180-a21.json");
const GOLDEN_ENVELOPE: &str = include_str!("../../tests/vectors/hybrid-envelope-v1.json");

fn key_pair() -> HybridKeyPair {
    HybridKeyPair::generate(&mut OsRng).unwrap()
}

fn field(vector: &Value, name: &str) -> Vec<u8> {
    hex::decode(vector[name].as_str().unwrap()).unwrap()
}

fn array<const N: usize>(vector: &Value, name: &str) -> [u8; N] {
    field(vector, name).try_into().unwrap()
}

#[test]
fn suite_ids_are_the_libraries() {
    assert_eq!(ENVELOPE_KEM_ID, KemAlgorithm::XWingDraft06 as u16);
    assert_eq!(ENVELOPE_KDF_ID, KdfAlgorithm::HkdfSha256 as u16);
    assert_eq!(ENVELOPE_AEAD_ID, AeadAlgorithm::ChaCha20Poly1305 as u16);
}

#[test]
fn roundtrip() {
    let bob = key_pair();
    for len in [0, 1, 100, 70_000] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let envelope = seal(&mut OsRng, bob.public_key(), b"context", &plaintext).unwrap();
        assert_eq!(envelope.len(), ENVELOPE_OVERHEAD + len);
        assert_eq!(&envelope[..HEADER_LEN], &header());
        assert_eq!(open(&bob, b"context", &envelope).unwrap().as_slice(), plaintext.as_slice());
    }
}

#[test]
fn sealing_twice_gives_different_envelopes() {
    let bob = key_pair();
    let first = seal(&mut OsRng, bob.public_key(), b"", b"same").unwrap();
    let second = seal(&mut OsRng, bob.public_key(), b"", b"same").unwrap();
    assert_ne!(first, second);
}

#[test]
fn wrong_recipient_fails() {
    let bob = key_pair();
    let eve = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"for bob").unwrap();
    assert!(matches!(open(&eve, b"", &envelope), Err(CoreError::DecryptionFailed)));
}

#[test]
fn wrong_aad_fails() {
    let bob = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"channel-1", b"hi").unwrap();
    assert!(matches!(open(&bob, b"channel-2", &envelope), Err(CoreError::DecryptionFailed)));
    assert!(matches!(open(&bob, b"", &envelope), Err(CoreError::DecryptionFailed)));
}

#[test]
fn tampered_enc_or_ciphertext_fails() {
    let bob = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"attack at dawn").unwrap();
    // ML-KEM ciphertext, X25519 ephemeral key, AEAD ciphertext, tag.
    for at in [HEADER_LEN, HEADER_LEN + 1100, HEADER_LEN + ENCAPSULATED_KEY_LEN, envelope.len() - 1] {
        let mut tampered = envelope.clone();
        tampered[at] ^= 0x01;
        assert!(matches!(open(&bob, b"", &tampered), Err(CoreError::DecryptionFailed)), "byte {at}");
    }
    let mut extended = envelope.clone();
    extended.push(0);
    assert!(matches!(open(&bob, b"", &extended), Err(CoreError::DecryptionFailed)));
}

#[test]
fn header_is_bound_as_associated_data() {
    // Every header byte of version 1 is fixed, so `parse` refuses any change
    // before decryption. Skip the parser to show that the AEAD would catch
    // a changed header too.
    let bob = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"payload").unwrap();
    let parts = parse(&envelope).unwrap();
    assert_eq!(open_parts(&bob, b"", &parts).unwrap().as_slice(), b"payload");
    for at in 0..HEADER_LEN {
        let mut other_header = header();
        other_header[at] ^= 0x01;
        let forged = Parts { header: &other_header, ..parse(&envelope).unwrap() };
        assert!(matches!(open_parts(&bob, b"", &forged), Err(CoreError::DecryptionFailed)), "header byte {at}");
    }
}

#[test]
fn unknown_version_and_downgrades_are_refused() {
    let bob = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"x").unwrap();

    for version in [0u8, 2, 0xff] {
        let mut other = envelope.clone();
        other[4] = version;
        assert!(matches!(
            open(&bob, b"", &other),
            Err(CoreError::UnsupportedVersion { version: v, .. }) if v == version
        ));
    }

    // Classical DHKEM(X25519) instead of X-Wing.
    let mut classical_kem = envelope.clone();
    classical_kem[5..7].copy_from_slice(&0x0020u16.to_be_bytes());
    assert!(matches!(
        open(&bob, b"", &classical_kem),
        Err(CoreError::UnsupportedEnvelopeSuite { kem: 0x0020, kdf: 0x0001, aead: 0x0003 })
    ));
    // ML-KEM-768 alone, HKDF-SHA512, AES-128-GCM, export-only.
    for (at, id) in [(5, 0x0041u16), (7, 0x0003), (9, 0x0001), (9, 0xffff)] {
        let mut other = envelope.clone();
        other[at..at + 2].copy_from_slice(&id.to_be_bytes());
        assert!(matches!(open(&bob, b"", &other), Err(CoreError::UnsupportedEnvelopeSuite { .. })));
    }

    let mut magic = envelope;
    magic[0] = b'X';
    assert!(matches!(open(&bob, b"", &magic), Err(CoreError::BadMagic { .. })));
}

#[test]
fn truncated_envelopes_are_refused() {
    let bob = key_pair();
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"x").unwrap();
    for len in [0, 4, 5, HEADER_LEN - 1, HEADER_LEN, ENVELOPE_OVERHEAD - 1] {
        assert!(matches!(open(&bob, b"", &envelope[..len]), Err(CoreError::Truncated { .. })), "length {len}");
    }
    // Exactly the overhead: an empty plaintext's size, but not this one's.
    assert!(matches!(open(&bob, b"", &envelope[..ENVELOPE_OVERHEAD]), Err(CoreError::DecryptionFailed)));
}

#[test]
fn size_cap_is_enforced_both_ways() {
    let bob = key_pair();
    let largest = vec![7u8; MAX_ENVELOPE_PLAINTEXT_LEN];
    let envelope = seal(&mut OsRng, bob.public_key(), b"", &largest).unwrap();
    assert_eq!(envelope.len(), MAX_ENVELOPE_LEN);
    assert_eq!(open(&bob, b"", &envelope).unwrap().as_slice(), largest.as_slice());

    let too_long = vec![0u8; MAX_ENVELOPE_PLAINTEXT_LEN + 1];
    assert!(matches!(
        seal(&mut OsRng, bob.public_key(), b"", &too_long),
        Err(CoreError::EnvelopeTooLarge { max: MAX_ENVELOPE_PLAINTEXT_LEN, .. })
    ));
    let mut hostile = header().to_vec();
    hostile.resize(MAX_ENVELOPE_LEN + 1, 0);
    assert!(matches!(
        open(&bob, b"", &hostile),
        Err(CoreError::EnvelopeTooLarge { len, max: MAX_ENVELOPE_LEN }) if len == MAX_ENVELOPE_LEN + 1
    ));
}

#[test]
fn public_key_parsing() {
    let bob = key_pair();
    let parsed = HybridPublicKey::from_bytes(bob.public_key().as_bytes()).unwrap();
    assert_eq!(&parsed, bob.public_key());
    assert!(matches!(
        HybridPublicKey::from_bytes(&bob.public_key().as_bytes()[1..]),
        Err(CoreError::InvalidKeyLength { expected: HYBRID_PUBLIC_KEY_LEN, actual: 1215 })
    ));
    // All-ones coefficients are out of range: the ML-KEM modulus check fails.
    assert!(matches!(
        HybridPublicKey::from_bytes(&[0xff; HYBRID_PUBLIC_KEY_LEN]),
        Err(CoreError::InvalidHybridPublicKey)
    ));
}

#[test]
fn secret_roundtrip_and_redacted_debug() {
    let bob = key_pair();
    let restored = HybridKeyPair::from_secret_bytes(&bob.secret_bytes()).unwrap();
    assert_eq!(restored.public_key(), bob.public_key());
    let envelope = seal(&mut OsRng, bob.public_key(), b"", b"still mine").unwrap();
    assert_eq!(open(&restored, b"", &envelope).unwrap().as_slice(), b"still mine");

    let debug = format!("{bob:?}");
    assert!(debug.contains(&bob.public_key().fingerprint()));
    assert!(!debug.contains(&hex::encode(*bob.secret_bytes())));
    assert!(!debug.contains(&hex::encode(&bob.public_key().as_bytes()[..16])));
}

/// X-Wing known answers, through this module's own code paths: key
/// generation from the seed, encapsulation from `eseed` (both deterministic
/// in libcrux-kem), and decapsulation as hpke-rs's libcrux backend does it.
#[test]
fn xwing_known_answers() {
    let vectors: Vec<Value> = serde_json::from_str(XWING_VECTORS).unwrap();
    assert_eq!(vectors.len(), 3);
    for vector in &vectors {
        let key_pair = HybridKeyPair::from_secret_bytes(&array(vector, "seed")).unwrap();
        assert_eq!(key_pair.public_key().as_bytes(), field(vector, "pk").as_slice());
        assert_eq!(key_pair.secret_bytes().as_slice(), field(vector, "sk").as_slice());

        let (shared_secret, enc) = encapsulate(key_pair.public_key(), &array(vector, "eseed")).unwrap();
        assert_eq!(enc, field(vector, "ct"));
        assert_eq!(shared_secret.as_slice(), field(vector, "ss").as_slice());

        let secret_key = PrivateKey::decode(Algorithm::XWingKemDraft06, &field(vector, "sk")).unwrap();
        let decapsulated =
            Ct::decode(Algorithm::XWingKemDraft06, &field(vector, "ct")).unwrap().decapsulate(&secret_key).unwrap();
        assert_eq!(decapsulated.encode(), field(vector, "ss"));

        // The same randomness through `seal` puts the vector's ciphertext in
        // the envelope, and the vector's secret key opens it.
        let envelope = seal_derand(&array(vector, "eseed"), key_pair.public_key(), b"kat", b"message").unwrap();
        assert_eq!(&envelope[HEADER_LEN..HEADER_LEN + ENCAPSULATED_KEY_LEN], field(vector, "ct").as_slice());
        assert_eq!(open(&key_pair, b"kat", &envelope).unwrap().as_slice(), b"message");
    }
}

/// RFC 9180 A.2.1 checks the part of the suite after the KEM: hpke-rs's key
/// schedule with HKDF-SHA256 and its ChaCha20-Poly1305 context, the calls
/// [`seal_derand`] makes (the KEM there is DHKEM(X25519); ours is X-Wing,
/// checked above).
#[test]
fn hpke_rfc9180_known_answer() {
    let vector: Value = serde_json::from_str(HPKE_VECTOR).unwrap();
    let hpke = Hpke::<HpkeLibcrux>::new(
        Mode::Base,
        KemAlgorithm::DhKem25519,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    );
    let info = field(&vector, "info");
    let (aad, plaintext, ciphertext) = (field(&vector, "aad"), field(&vector, "pt"), field(&vector, "ct"));

    let mut sender = hpke.key_schedule(&field(&vector, "shared_secret"), &info, &[], &[]).unwrap();
    assert_eq!(sender.seal(&aad, &plaintext).unwrap(), ciphertext);

    let secret_key = HpkePrivateKey::new(field(&vector, "skRm"));
    let mut receiver = hpke.setup_receiver(&field(&vector, "enc"), &secret_key, &info, None, None, None).unwrap();
    assert_eq!(receiver.open(&aad, &ciphertext).unwrap(), plaintext);
}

/// An envelope whose HPKE part comes from hpke-rs's own single-shot `Seal`
/// (its own randomness) opens here: the composed sender is HPKE.
#[test]
fn library_sealed_envelope_opens() {
    let bob = key_pair();
    let mut hpke = hpke();
    let full_aad = associated_data(&header(), b"interop");
    let (enc, ciphertext) = hpke
        .seal(&HpkePublicKey::new(bob.public_key().to_bytes()), INFO, &full_aad, b"from hpke-rs", None, None, None)
        .unwrap();
    let envelope = [header().as_slice(), &enc, &ciphertext].concat();
    assert_eq!(open(&bob, b"interop", &envelope).unwrap().as_slice(), b"from hpke-rs");
}

/// The envelope format, pinned: a change to the header, the `info` label,
/// the associated data layout or the suite shows up here.
#[test]
fn golden_envelope() {
    let vector: Value = serde_json::from_str(GOLDEN_ENVELOPE).unwrap();
    let recipient = HybridKeyPair::from_secret_bytes(&array(&vector, "recipient_seed")).unwrap();
    let (shared_secret, _) = encapsulate(recipient.public_key(), &array(&vector, "encapsulation_randomness")).unwrap();
    assert_eq!(shared_secret.as_slice(), field(&vector, "shared_secret").as_slice());
    let envelope = seal_derand(
        &array(&vector, "encapsulation_randomness"),
        recipient.public_key(),
        &field(&vector, "aad"),
        &field(&vector, "plaintext"),
    )
    .unwrap();
    assert_eq!(hex::encode(&envelope), vector["envelope"].as_str().unwrap());
    let opened = open(&recipient, &field(&vector, "aad"), &envelope).unwrap();
    assert_eq!(opened.as_slice(), field(&vector, "plaintext").as_slice());
}
