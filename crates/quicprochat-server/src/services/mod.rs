//! Domain services: transport-agnostic async functions over [`crate::state::AppState`].
//! The RPC layer (`crate::routes`) only converts messages and calls these.

pub mod auth;
pub mod blobs;
pub mod channels;
pub mod delivery;
pub mod devices;
pub mod keys;
pub mod users;

use crate::error::ServiceError;

/// Folds and validates a username: 3-32 characters of `[a-z0-9_.-]`.
pub fn normalize_username(raw: &str) -> Result<String, ServiceError> {
    let name = raw.trim().to_lowercase();
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok_len && ok_chars {
        Ok(name)
    } else {
        Err(ServiceError::BadRequest("username must be 3-32 characters of [a-z0-9_.-]".into()))
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_folded_and_checked() {
        assert_eq!(normalize_username("Alice").unwrap(), "alice");
        assert!(normalize_username("al").is_err());
        assert!(normalize_username("a b c").is_err());
        assert!(normalize_username(&"x".repeat(33)).is_err());
        assert_eq!(normalize_username("bob_1.x-y").unwrap(), "bob_1.x-y");
    }
}
