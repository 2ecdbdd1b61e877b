//! `quicprochat_core::archive::verify_archive`, the independent verifier
//! of transcript archives (files a user imports), with a fixed password.
//!
//! Two modes, by the first byte:
//! - anything but `0`: the input is the archive (`"QPCA"` starts with
//!   `Q`). A fuzzer cannot forge the records' ChaCha20-Poly1305 tags, so
//!   this mode reaches the header, the length prefixes and, from seeds,
//!   whole valid archives.
//! - `0`: the rest is a script of record plaintexts that
//!   [`quicprochat_fuzz::ArchiveSealer`] seals with the archive key, so the
//!   record parser and the hash chain behind the AEAD see arbitrary bytes.
//!
//! The Argon2 parameters come from the header, and the verifier accepts up
//! to 1 GiB and 16 iterations (`keystore::MAX_*`): one such input would take
//! seconds. So raw inputs whose header asks for more than light parameters
//! (`quicprochat_fuzz::kdf_header_too_slow`) are skipped; parameters over
//! the caps still run, since they are refused before Argon2 allocates.
//!
//! Properties: no panic; a verified archive rebuilt record by record with
//! `ArchiveWriter` (another password, light parameters) verifies to the same
//! records and the same head hash, and the writer reports that head hash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::KdfParams;
use quicprochat_core::archive::{ArchiveWriter, verify_archive};
use quicprochat_fuzz::{ArchiveSealer, FixedRng, PASSWORD, kdf_header_too_slow};

thread_local! {
    static SEALER: ArchiveSealer = ArchiveSealer::new();
}

fuzz_target!(|data: &[u8]| {
    let archive = match data.split_first() {
        Some((0, script)) => SEALER.with(|sealer| sealer.seal(script)),
        _ if kdf_header_too_slow(data) => return,
        _ => data.to_vec(),
    };
    let Ok(verified) = verify_archive(&archive, PASSWORD) else {
        return;
    };

    let mut rng = FixedRng::new(7);
    let password = b"another password";
    let mut writer = ArchiveWriter::new(&mut rng, password, &KdfParams::light()).expect("light parameters");
    for record in &verified.records {
        writer.append(&mut rng, record).expect("a verified record fits the limits");
    }
    assert_eq!(writer.head_hash(), verified.head_hash);
    let rebuilt = writer.finish(&mut rng).expect("finish");
    let again = verify_archive(&rebuilt, password).expect("a rebuilt archive verifies");
    assert_eq!(again, verified);
});
