use rand::rngs::OsRng;
use rand_core::{CryptoRng, RngCore};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::*;

const PASSWORD: &[u8] = b"correct horse battery staple";

/// The format's known answer: an archive of three records, written by
/// [`write_vector_archive`] and checked against an independent
/// implementation of the module docs.
const VECTOR: &str = include_str!("../../tests/vectors/archive_v1.json");

#[derive(Deserialize)]
struct Vector {
    password: String,
    records: Vec<VectorRecord>,
    record_hashes: Vec<String>,
    head_hash: String,
    archive: String,
}

#[derive(Deserialize)]
struct VectorRecord {
    timestamp_ms: u64,
    channel_id: String,
    sender_device: String,
    sender: String,
    body: String,
}

impl VectorRecord {
    fn to_record(&self) -> ArchiveRecord {
        ArchiveRecord {
            timestamp_ms: self.timestamp_ms,
            channel_id: ChannelId::from_hex(&self.channel_id).unwrap(),
            sender_device: DeviceId::from_hex(&self.sender_device).unwrap(),
            sender: self.sender.clone(),
            body: hex::decode(&self.body).unwrap(),
        }
    }
}

/// A deterministic RNG for the known-answer archive: block `i` is
/// `SHA-256("qpc-test-rng" ‖ u64be(i))`. Never use outside tests.
struct CountingRng {
    counter: u64,
    buffer: Vec<u8>,
}

impl CountingRng {
    fn new() -> Self {
        Self { counter: 0, buffer: Vec::new() }
    }
}

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_be_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_be_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.buffer.is_empty() {
                let block = Sha256::new().chain_update(b"qpc-test-rng").chain_update(self.counter.to_be_bytes());
                self.buffer = block.finalize().to_vec();
                self.counter += 1;
            }
            *byte = self.buffer.remove(0);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}

fn vector_records() -> Vec<ArchiveRecord> {
    vec![
        ArchiveRecord {
            timestamp_ms: 1_700_000_000_000,
            channel_id: ChannelId([0x11; 16]),
            sender_device: DeviceId([0xa1; 16]),
            sender: "alice".to_owned(),
            body: b"hello bob".to_vec(),
        },
        ArchiveRecord {
            timestamp_ms: 1_700_000_001_500,
            channel_id: ChannelId([0x11; 16]),
            sender_device: DeviceId([0xb2; 16]),
            sender: "bob".to_owned(),
            body: "hi alice \u{1f44b}".as_bytes().to_vec(),
        },
        ArchiveRecord {
            timestamp_ms: 1_700_000_002_000,
            channel_id: ChannelId([0x22; 16]),
            sender_device: DeviceId([0xa1; 16]),
            sender: "alice".to_owned(),
            body: Vec::new(),
        },
    ]
}

fn write_vector_archive() -> (Vec<u8>, Vec<[u8; 32]>) {
    let mut rng = CountingRng::new();
    let mut writer = ArchiveWriter::new(&mut rng, PASSWORD, &KdfParams::light()).unwrap();
    let hashes = vector_records().iter().map(|record| writer.append(&mut rng, record).unwrap()).collect();
    (writer.finish(&mut rng).unwrap(), hashes)
}

fn archive_of(records: &[ArchiveRecord]) -> Vec<u8> {
    let mut writer = ArchiveWriter::new(&mut OsRng, PASSWORD, &KdfParams::light()).unwrap();
    for record in records {
        writer.append(&mut OsRng, record).unwrap();
    }
    writer.finish(&mut OsRng).unwrap()
}

/// Splits an archive into its header and sealed records (length prefix
/// included).
fn split(archive: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (header, mut rest) = archive.split_at(HEADER_LEN);
    let mut records = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let (record, tail) = rest.split_at(4 + len);
        records.push(record.to_vec());
        rest = tail;
    }
    (header.to_vec(), records)
}

fn join(header: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header.to_vec();
    for record in records {
        out.extend_from_slice(record);
    }
    out
}

#[test]
fn known_answer_archive() {
    let vector: Vector = serde_json::from_str(VECTOR).unwrap();
    let records: Vec<ArchiveRecord> = vector.records.iter().map(VectorRecord::to_record).collect();
    assert_eq!(records, vector_records());

    let archive = hex::decode(&vector.archive).unwrap();
    let verified = verify_archive(&archive, vector.password.as_bytes()).unwrap();
    assert_eq!(verified.records, records);
    assert_eq!(hex::encode(verified.head_hash), vector.head_hash);

    // The writer still produces exactly these bytes (a format change shows
    // up here as a diff of the vector file).
    let (written, hashes) = write_vector_archive();
    assert_eq!(hex::encode(&written), vector.archive);
    let hashes: Vec<String> = hashes.iter().map(hex::encode).collect();
    assert_eq!(hashes, vector.record_hashes);
}

/// Regenerates `tests/vectors/archive_v1.json` after a deliberate format
/// change: `cargo test -p quicprochat-core print_archive_vector -- --ignored --nocapture`.
#[test]
#[ignore = "prints the known-answer vector; run by hand"]
fn print_archive_vector() {
    let (archive, hashes) = write_vector_archive();
    let records: Vec<serde_json::Value> = vector_records()
        .iter()
        .map(|record| {
            serde_json::json!({
                "timestamp_ms": record.timestamp_ms,
                "channel_id": record.channel_id.to_hex(),
                "sender_device": record.sender_device.to_hex(),
                "sender": record.sender,
                "body": hex::encode(&record.body),
            })
        })
        .collect();
    let vector = serde_json::json!({
        "description": "quicprochat transcript archive, format version 1 (see src/archive.rs)",
        "password": std::str::from_utf8(PASSWORD).unwrap(),
        "kdf": { "m_cost_kib": 8, "t_cost": 1, "p_cost": 1 },
        "genesis_hash": hex::encode(archive_genesis_hash()),
        "records": records,
        "record_hashes": hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        "head_hash": hex::encode(hashes[hashes.len() - 1]),
        "archive": hex::encode(archive),
    });
    println!("{}", serde_json::to_string_pretty(&vector).unwrap());
}

#[test]
fn roundtrip_and_head_hash() {
    let records = vector_records();
    let mut writer = ArchiveWriter::new(&mut OsRng, PASSWORD, &KdfParams::light()).unwrap();
    assert_eq!(writer.head_hash(), archive_genesis_hash());
    for record in &records {
        writer.append(&mut OsRng, record).unwrap();
    }
    assert_eq!(writer.record_count(), 3);
    let head = writer.head_hash();
    let archive = writer.finish(&mut OsRng).unwrap();
    let verified = verify_archive(&archive, PASSWORD).unwrap();
    assert_eq!(verified.records, records);
    assert_eq!(verified.head_hash, head);

    // The head hash depends on the records only, not on salt or nonces.
    let again = verify_archive(&archive_of(&records), PASSWORD).unwrap();
    assert_eq!(again.head_hash, head);
    assert_ne!(archive_of(&records), archive);

    // An empty archive is valid and its head is the genesis hash.
    let empty = verify_archive(&archive_of(&[]), PASSWORD).unwrap();
    assert!(empty.records.is_empty());
    assert_eq!(empty.head_hash, archive_genesis_hash());
}

#[test]
fn wrong_password_is_refused() {
    let archive = archive_of(&vector_records());
    assert!(matches!(verify_archive(&archive, b"wrong"), Err(CoreError::WrongPassword)));
    assert!(matches!(verify_archive(&archive_of(&[]), b"wrong"), Err(CoreError::WrongPassword)));
}

#[test]
fn tampering_is_detected() {
    let archive = archive_of(&vector_records());
    let (header, records) = split(&archive);

    // A ciphertext byte of the second record.
    let mut tampered = records.clone();
    let last = tampered[1].len() - 1;
    tampered[1][last] ^= 1;
    assert!(matches!(
        verify_archive(&join(&header, &tampered), PASSWORD),
        Err(CoreError::ArchiveRecordCorrupt { index: 1 })
    ));

    // The salt, or an Argon2 parameter within bounds: the key changes.
    let mut bad_header = header.clone();
    bad_header[20] ^= 1;
    assert!(matches!(verify_archive(&join(&bad_header, &records), PASSWORD), Err(CoreError::WrongPassword)));
    let mut bad_header = header.clone();
    bad_header[12] = 2;
    assert!(matches!(verify_archive(&join(&bad_header, &records), PASSWORD), Err(CoreError::WrongPassword)));

    // Magic and version.
    let mut bad = archive.clone();
    bad[0] = b'X';
    assert!(matches!(verify_archive(&bad, PASSWORD), Err(CoreError::BadMagic { .. })));
    let mut bad = archive;
    bad[4] = 9;
    assert!(matches!(verify_archive(&bad, PASSWORD), Err(CoreError::UnsupportedVersion { version: 9, .. })));
}

#[test]
fn removed_repeated_or_reordered_records_break_the_chain() {
    let archive = archive_of(&vector_records());
    let (header, records) = split(&archive);
    assert_eq!(records.len(), 4); // three messages and the end record

    // Truncation in the middle: the second message removed.
    let removed = [records[0].clone(), records[2].clone(), records[3].clone()];
    assert!(matches!(
        verify_archive(&join(&header, &removed), PASSWORD),
        Err(CoreError::ArchiveChainBroken { index: 1 })
    ));

    // Reordered.
    let swapped = [records[0].clone(), records[2].clone(), records[1].clone(), records[3].clone()];
    assert!(matches!(
        verify_archive(&join(&header, &swapped), PASSWORD),
        Err(CoreError::ArchiveChainBroken { index: 1 })
    ));

    // Repeated.
    let repeated = [records[0].clone(), records[0].clone(), records[1].clone(), records[2].clone(), records[3].clone()];
    assert!(matches!(
        verify_archive(&join(&header, &repeated), PASSWORD),
        Err(CoreError::ArchiveChainBroken { index: 1 })
    ));

    // Records spliced in from another archive under the same password do
    // not authenticate (other salt, other key).
    let (_, foreign) = split(&archive_of(&vector_records()));
    let spliced = [records[0].clone(), foreign[1].clone(), records[2].clone(), records[3].clone()];
    assert!(matches!(
        verify_archive(&join(&header, &spliced), PASSWORD),
        Err(CoreError::ArchiveRecordCorrupt { index: 1 })
    ));
}

#[test]
fn cut_off_archives_are_refused() {
    let archive = archive_of(&vector_records());
    let (header, records) = split(&archive);

    // The end record dropped: looks complete record by record, but is not.
    assert!(matches!(verify_archive(&join(&header, &records[..3]), PASSWORD), Err(CoreError::Truncated { .. })));
    // Cut inside a record, inside a length prefix, inside the header.
    assert!(matches!(verify_archive(&archive[..archive.len() - 1], PASSWORD), Err(CoreError::Truncated { .. })));
    let prefix_cut = HEADER_LEN + records[0].len() + 2;
    assert!(matches!(verify_archive(&archive[..prefix_cut], PASSWORD), Err(CoreError::Truncated { .. })));
    assert!(matches!(verify_archive(&archive[..HEADER_LEN - 1], PASSWORD), Err(CoreError::Truncated { .. })));
    // Anything after the end record.
    let mut trailing = archive;
    trailing.push(0);
    assert!(matches!(verify_archive(&trailing, PASSWORD), Err(CoreError::MalformedArchive { .. })));
}

#[test]
fn hostile_lengths_are_refused_before_allocating() {
    let archive = archive_of(&vector_records());
    let mut huge = archive.clone();
    huge[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        verify_archive(&huge, PASSWORD),
        Err(CoreError::ArchiveFieldTooLong { field: "sealed record", .. })
    ));
    let mut tiny = archive.clone();
    tiny[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&4u32.to_be_bytes());
    assert!(matches!(verify_archive(&tiny, PASSWORD), Err(CoreError::MalformedArchive { .. })));
    // 100 GiB of Argon2 memory.
    let mut heavy = archive;
    heavy[5..9].copy_from_slice(&(100u32 * 1024 * 1024).to_be_bytes());
    assert!(matches!(verify_archive(&heavy, PASSWORD), Err(CoreError::KdfParamsOutOfBounds { .. })));
}

#[test]
fn writer_enforces_limits() {
    let mut writer = ArchiveWriter::new(&mut OsRng, PASSWORD, &KdfParams::light()).unwrap();
    let mut record = vector_records().remove(0);
    record.sender = "x".repeat(MAX_SENDER_LEN + 1);
    assert!(matches!(
        writer.append(&mut OsRng, &record),
        Err(CoreError::ArchiveFieldTooLong { field: "sender", len: 256, max: 255 })
    ));
    record.sender = "x".repeat(MAX_SENDER_LEN);
    record.body = vec![0; MAX_BODY_LEN + 1];
    assert!(matches!(writer.append(&mut OsRng, &record), Err(CoreError::ArchiveFieldTooLong { field: "body", .. })));
    assert_eq!(writer.record_count(), 0);

    // The largest record fits the reader's cap exactly.
    record.body.pop();
    writer.append(&mut OsRng, &record).unwrap();
    let archive = writer.finish(&mut OsRng).unwrap();
    assert_eq!(split(&archive).1[0].len(), 4 + MAX_SEALED_RECORD_LEN);
    assert_eq!(verify_archive(&archive, PASSWORD).unwrap().records, [record]);
}

#[test]
fn debug_output_is_redacted() {
    let records = vector_records();
    let record_debug = format!("{:?}", records[0]);
    assert!(record_debug.contains("body_len: 9"));
    assert!(!record_debug.contains("hello"));
    let verified = verify_archive(&archive_of(&records), PASSWORD).unwrap();
    assert!(!format!("{verified:?}").contains("hello"));
    let writer = ArchiveWriter::new(&mut OsRng, PASSWORD, &KdfParams::light()).unwrap();
    let debug = format!("{writer:?}");
    assert!(!debug.contains(&hex::encode(*writer.key)));
}
