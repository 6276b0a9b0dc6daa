//! The demo users, with passwords checked against Argon2id hashes (the
//! `argon2` crate, OWASP's first choice for password storage).
//!
//! A real app keeps the PHC strings in its database; here they are made at
//! first use from the demo passwords, with a random salt each.
//!
//! Checks hash into working memory taken from a small pool (one buffer per
//! check allowed at once) instead of allocating Argon2's 19 MiB each time:
//! memory freed by one check stays with the allocator (per thread arena),
//! so a burst of failed logins spread over the blocking threads grew the
//! process by more than a gigabyte that it never gave back.

use std::sync::{Mutex, OnceLock, PoisonError};

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// How many password checks may run at once (callers keep to it): each
/// holds one Argon2 working memory, 19 MiB with the default parameters,
/// and the pool keeps at most this many for reuse.
pub const MAX_CONCURRENT_CHECKS: usize = 4;

/// How many logins may wait for a check beyond those running: past that a
/// login is answered 503 at once (a flood of guesses for made-up names
/// cannot queue without bound, holding connections and memory).
pub const MAX_QUEUED_CHECKS: usize = 16;

/// The users who may change prices.
pub const ADMINS: [&str; 1] = ["alice"];

/// Whether `user` may use `/admin/...`.
pub fn is_admin(user: &str) -> bool {
    ADMINS.contains(&user)
}

/// Argon2 working memories, kept for the next check.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Runs `f` on `blocks` blocks of working memory from the pool. A buffer
/// is allocated only when none is free, and kept afterwards only while the
/// pool holds fewer than [`MAX_CONCURRENT_CHECKS`]: with callers keeping
/// to that, the app allocates at most that many buffers, once each.
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let pooled = MEMORY.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut memory = pooled.unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let result = f(&mut memory[..blocks]);
    let mut pool = MEMORY.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < MAX_CONCURRENT_CHECKS {
        pool.push(memory);
    }
    result
}

/// Whether `password` hashes to `phc` (a PHC string), with the algorithm,
/// version, parameters and salt it names; the outputs are compared in
/// constant time ([`Output`]'s equality). Anything unreadable is a no.
fn matches(phc: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = with_memory(argon2.params().block_count(), |memory| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), &mut *out, memory)
    });
    hashed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
}

/// Whether `password` is `user`'s. Slow on purpose (Argon2): call it from
/// a blocking task, at most [`MAX_CONCURRENT_CHECKS`] at once.
pub fn verify(user: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let store = store();
    let (known, phc) = match store.users.iter().find(|(name, _)| *name == user) {
        Some((_, phc)) => (true, phc.as_str()),
        None => (false, store.decoy.as_str()),
    };
    let ok = matches(phc, password);
    known && ok
}
