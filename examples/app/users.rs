//! The demo users, with passwords checked against Argon2id hashes (the
//! `argon2` crate, OWASP's first choice for password storage).
//!
//! A real app keeps the PHC strings in its database; here they are made at
//! first use from the demo passwords, with a random salt each.

use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// The demo accounts: user name and password (shown on the login page).
pub const DEMO: [(&str, &str); 2] = [("alice", "wonderland"), ("bob", "builder")];

/// Longer passwords are refused before hashing (hashing cost grows with
/// length): the form allows 256 characters, at most 4 bytes each.
pub const MAX_PASSWORD_BYTES: usize = 1024;

struct Store {
    users: Vec<(&'static str, String)>,
    /// Checked when the name is unknown, so an unknown name takes as long
    /// as a wrong password and does not reveal which names exist.
    decoy: String,
}

fn hash(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("Argon2 with default parameters hashes any short password")
        .to_string()
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| Store {
        users: DEMO.iter().map(|(name, pw)| (*name, hash(pw))).collect(),
        decoy: hash("no user has this password"),
    })
}

/// Whether `password` is `user`'s. Slow on purpose (Argon2): call it from
/// a blocking task.
pub fn verify(user: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let store = store();
    let (known, phc) = match store.users.iter().find(|(name, _)| *name == user) {
        Some((_, phc)) => (true, phc.as_str()),
        None => (false, store.decoy.as_str()),
    };
    let ok = PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false);
    known && ok
}
