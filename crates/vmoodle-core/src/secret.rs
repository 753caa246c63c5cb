//! Secrets: a string type that never prints itself, and the box that encrypts stored database
//! passwords with the home's secret key (AES-256-GCM, a fresh random nonce per value).
//!
//! Every sealed value is bound to where it is stored (table, column and the row's stable key,
//! see [`Binding`]) through the AEAD's associated data, so a value copied into another place
//! (a server's administrator password into an instance's `dbpass`, which `hook publish` would
//! write into a host file the web server reads) no longer opens. Values of the first format
//! (`v1:`, one constant associated data for all) open only while the home is being upgraded
//! (see `SecretBox::accept_unbound`); vmoodle then re-seals them bound (`v2:`).

use openssl::base64;
use openssl::rand::rand_bytes;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use std::fmt;
use thiserror::Error;

/// A secret value. Debug and Display print `****`; the value is reached only with `expose`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A random password for a database account: 24 characters of letters and digits.
    pub fn random_password() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        let mut buf = [0u8; 24];
        rand_bytes(&mut buf).expect("the system random generator works");
        Secret(
            buf.iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect(),
        )
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("the secret key must be 32 bytes written as 64 hexadecimal digits")]
    BadKey,
    #[error("a stored secret cannot be decrypted: it was not written by this home's secret key, or it was altered")]
    Decrypt,
    #[error("a stored secret is not in vmoodle's `v2:` format")]
    Format,
    #[error("a stored secret of the old unbound format (`v1:`) is refused: it could have been copied from another row\nhint: set it again (e.g. `instance edit NAME --password-stdin`, `dbserver remove` and `add`)")]
    Unbound,
    #[error("encryption failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

const AAD_V1: &[u8] = b"vmoodle-secret-v1";

/// Where a sealed value is stored: its table, column and the stable key of its row (a server's
/// name, an instance's shortname; empty for a setting). Re-seal when the row key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl<'a> Binding<'a> {
    /// `db_servers.admin_password` of the server named `name`.
    pub fn dbserver_admin(name: &'a str) -> Self {
        Self {
            table: "db_servers",
            column: "admin_password",
            row: name,
        }
    }
    /// `instances.dbpass` of the instance with this shortname.
    pub fn instance_dbpass(shortname: &'a str) -> Self {
        Self {
            table: "instances",
            column: "dbpass",
            row: shortname,
        }
    }
    /// `cluster_nodes.token` of the node named `name` (the token its agent accepts).
    pub fn node_token(name: &'a str) -> Self {
        Self {
            table: "cluster_nodes",
            column: "token",
            row: name,
        }
    }
    /// `clusters.repl_password` of the cluster named `name`.
    pub fn cluster_repl(name: &'a str) -> Self {
        Self {
            table: "clusters",
            column: "repl_password",
            row: name,
        }
    }
    /// A secret setting in vmoodle.toml (`schema.db_password`).
    pub fn setting(key: &'a str) -> Self {
        Self {
            table: "settings",
            column: key,
            row: "",
        }
    }

    /// The associated data: each part length-prefixed, so no two bindings give the same bytes.
    fn aad(&self) -> Vec<u8> {
        let mut v = b"vmoodle-secret-v2".to_vec();
        for part in [self.table, self.column, self.row] {
            v.extend_from_slice(&(part.len() as u32).to_be_bytes());
            v.extend_from_slice(part.as_bytes());
        }
        v
    }
}

/// Encrypts and decrypts secrets stored at rest (register rows, settings).
#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
    /// Whether `v1:` values (unbound) still open: only until the home's one-time upgrade.
    accept_unbound: bool,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(****)")
    }
}

impl SecretBox {
    /// A new random key, in the hexadecimal form kept in `secret.key`.
    pub fn generate_key_hex() -> String {
        let mut key = [0u8; 32];
        rand_bytes(&mut key).expect("the system random generator works");
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Result<Self, SecretError> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(SecretError::BadKey);
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| SecretError::BadKey)?;
        }
        Ok(Self {
            key,
            accept_unbound: false,
        })
    }

    /// Lets `v1:` (unbound) values open, for the home's one-time upgrade to bound values.
    pub fn accept_unbound(&mut self, yes: bool) {
        self.accept_unbound = yes;
    }

    /// Whether a stored value is of the old, unbound format.
    pub fn is_unbound(sealed: &str) -> bool {
        sealed.starts_with("v1:")
    }

    /// `v2:` + base64(nonce(12) || ciphertext || tag(16)), bound to `at`.
    pub fn seal(&self, secret: &Secret, at: &Binding<'_>) -> Result<String, SecretError> {
        let mut nonce = [0u8; 12];
        rand_bytes(&mut nonce)?;
        let mut tag = [0u8; 16];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            &at.aad(),
            secret.expose().as_bytes(),
            &mut tag,
        )?;
        let mut blob = Vec::with_capacity(12 + ct.len() + 16);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        blob.extend_from_slice(&tag);
        Ok(format!("v2:{}", base64::encode_block(&blob)))
    }

    /// Opens a value sealed for `at`. A value sealed for another place does not open; an
    /// unbound `v1:` value opens only while `accept_unbound` is set.
    pub fn open(&self, sealed: &str, at: &Binding<'_>) -> Result<Secret, SecretError> {
        if let Some(b64) = sealed.strip_prefix("v2:") {
            return self.decrypt(b64, &at.aad());
        }
        if let Some(b64) = sealed.strip_prefix("v1:") {
            if !self.accept_unbound {
                return Err(SecretError::Unbound);
            }
            return self.decrypt(b64, AAD_V1);
        }
        Err(SecretError::Format)
    }

    fn decrypt(&self, b64: &str, aad: &[u8]) -> Result<Secret, SecretError> {
        let blob = base64::decode_block(b64).map_err(|_| SecretError::Format)?;
        if blob.len() < 28 {
            return Err(SecretError::Format);
        }
        let (nonce, rest) = blob.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let pt = decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(nonce), aad, ct, tag)
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(pt)
            .map(Secret)
            .map_err(|_| SecretError::Decrypt)
    }
}

impl SecretBox {
    /// HMAC-SHA256 of `parts` (each length-prefixed, so no two lists give the same message)
    /// under a key derived from the home's key for `purpose`, in hex. Vouches that vmoodle with
    /// this home's key wrote the parts (archives), without exposing the key itself.
    pub fn mac(&self, purpose: &str, parts: &[&[u8]]) -> Result<String, SecretError> {
        use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
        let derive = PKey::hmac(&self.key)?;
        let mut s = Signer::new(MessageDigest::sha256(), &derive)?;
        s.update(b"vmoodle-mac-v1:")?;
        s.update(purpose.as_bytes())?;
        let key = PKey::hmac(&s.sign_to_vec()?)?;
        let mut s = Signer::new(MessageDigest::sha256(), &key)?;
        for p in parts {
            s.update(&(p.len() as u64).to_be_bytes())?;
            s.update(p)?;
        }
        Ok(s.sign_to_vec()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Checks a MAC made by `mac`, in constant time.
    pub fn mac_matches(&self, purpose: &str, parts: &[&[u8]], mac: &str) -> bool {
        match self.mac(purpose, parts) {
            Ok(m) => m.len() == mac.len() && openssl::memcmp::eq(m.as_bytes(), mac.as_bytes()),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_binds_key_purpose_and_parts() {
        let b = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        let other = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        let m = b.mac("archive", &[b"manifest", b"entry"]).unwrap();
        assert_eq!(m.len(), 64);
        assert!(b.mac_matches("archive", &[b"manifest", b"entry"], &m));
        assert!(!other.mac_matches("archive", &[b"manifest", b"entry"], &m));
        assert!(!b.mac_matches("other", &[b"manifest", b"entry"], &m));
        assert!(!b.mac_matches("archive", &[b"manifest", b"entrY"], &m));
        // Moving bytes between parts changes the MAC.
        assert!(!b.mac_matches("archive", &[b"manifes", b"tentry"], &m));
        assert!(!b.mac_matches("archive", &[b"manifest", b"entry"], ""));
    }

    #[test]
    fn round_trip_and_tamper() {
        let b = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        let s = Secret::new("p@ss'word");
        let at = Binding::instance_dbpass("school1");
        let sealed = b.seal(&s, &at).unwrap();
        assert!(!sealed.contains("p@ss"));
        assert_eq!(b.open(&sealed, &at).unwrap(), s);
        assert_ne!(b.seal(&s, &at).unwrap(), sealed, "nonce must be fresh");
        let other = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        assert!(matches!(
            other.open(&sealed, &at),
            Err(SecretError::Decrypt)
        ));
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(Secret::random_password().expose().len(), 24);
    }

    #[test]
    fn bound_to_table_column_and_row() {
        let b = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        let s = Secret::new("admin-pw");
        let sealed = b.seal(&s, &Binding::dbserver_admin("db1")).unwrap();
        for elsewhere in [
            Binding::instance_dbpass("db1"),
            Binding::dbserver_admin("db2"),
            Binding::setting("schema.db_password"),
            Binding {
                table: "db_servers",
                column: "admin_passworddb1",
                row: "",
            },
        ] {
            assert!(
                matches!(b.open(&sealed, &elsewhere), Err(SecretError::Decrypt)),
                "{elsewhere:?}"
            );
        }
        assert_eq!(b.open(&sealed, &Binding::dbserver_admin("db1")).unwrap(), s);
    }

    #[test]
    fn unbound_values_open_only_during_the_upgrade() {
        let mut b = SecretBox::from_hex(&SecretBox::generate_key_hex()).unwrap();
        // A value of the first format, as vmoodle wrote it before bindings.
        let mut nonce = [0u8; 12];
        rand_bytes(&mut nonce).unwrap();
        let mut tag = [0u8; 16];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &b.key,
            Some(&nonce),
            AAD_V1,
            b"old",
            &mut tag,
        )
        .unwrap();
        let v1 = format!(
            "v1:{}",
            base64::encode_block(&[&nonce[..], &ct, &tag].concat())
        );
        let at = Binding::instance_dbpass("a");
        assert!(matches!(b.open(&v1, &at), Err(SecretError::Unbound)));
        b.accept_unbound(true);
        assert_eq!(b.open(&v1, &at).unwrap().expose(), "old");
        assert!(SecretBox::is_unbound(&v1));
    }
}
