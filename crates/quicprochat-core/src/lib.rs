//! Cryptography of quicprochat: device identities, MLS groups, OPAQUE password
//! authentication and sealed storage.
//!
//! Pure logic: no sockets, no async runtime, no clock, no global RNG.
//! Randomness comes in as `&mut impl CryptoRngCore` wherever this crate needs
//! it (the openmls provider keeps its own RNG); persistence is the caller's
//! job, with [`mls::MlsClient::export_state`] and [`keystore`] to seal what is
//! stored.
//!
//! | module | idea |
//! |---|---|
//! | [`identity`] | Ed25519 device identity keys and signatures |
//! | [`ids`] | typed ids and the hashes that derive them |
//! | [`mls`] | MLS groups via openmls with the X-Wing ciphersuite |
//! | [`opaque`] | OPAQUE registration and login, client and server halves |
//! | [`keystore`] | Argon2id + ChaCha20-Poly1305 sealed blobs |
//! | [`safety_number`] | 60-digit safety numbers users compare |
//! | [`archive`] | password-encrypted, hash-chained transcript archives |
//! | [`public_group`] | server-side tracking of a channel's MLS group |
//! | [`envelope`] | HPKE + X-Wing hybrid envelopes to a device's public key |
//! | [`sealed_sender`] | anonymous, member-authorised enqueue proofs |
//! | [`error`] | [`CoreError`], the crate's one error type |

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod ids;
pub mod keystore;
pub mod mls;
pub mod opaque;
pub mod public_group;
pub mod safety_number;
pub mod sealed_sender;

pub use archive::{ArchiveRecord, ArchiveWriter, VerifiedArchive, verify_archive};
pub use envelope::{HybridKeyPair, HybridPublicKey};
pub use error::CoreError;
pub use identity::{IdentityKeyPair, verify_signature};
pub use ids::{ChannelId, DeviceId, delivery_proof_digest, device_binding_challenge, device_id_for_key, dm_channel_id};
pub use keystore::{KdfParams, open_with_key, open_with_password, seal_with_key, seal_with_password};
pub use mls::{
    AddOutcome, CommitOutcome, ExternalJoin, JoinedGroup, MemberInfo, MlsClient, MlsSuite, Processed, StateChanges,
};
pub use opaque::{
    ClientLogin, ClientLoginOutput, ClientRegistration, OpaqueParams, OpaqueServerSetup, ServerLogin,
    server_registration_finish, server_registration_start,
};
pub use public_group::{ChannelTracker, Tracked, TrackedCommit};
pub use safety_number::SafetyNumber;
pub use sealed_sender::{
    EpochSenderKey, EpochSenderPublicKey, FreshnessWindow, ReplayGuard, SenderProof, VerifiedSenderProof,
};
