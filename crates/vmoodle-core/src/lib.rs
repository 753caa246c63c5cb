//! The vocabulary of vmoodle: what an instance, a database server and a naming schema are, the
//! rules every name must follow before it reaches SQL, a host name or the filesystem, the
//! settings file, and the secret box that encrypts stored passwords. Nothing here talks to a
//! database or runs a tool, so every other crate can depend on it.

pub mod env;
pub mod model;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod validate;

pub use model::{DbKind, MnetMode};
pub use secret::{Binding, Secret, SecretBox};
pub use validate::ValidationError;

/// Current time as seconds since the Unix epoch (what the register stores).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
