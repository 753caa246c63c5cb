//! The agent's identity: the token the control node presents (only its SHA-256 is kept on the
//! node) and a self-signed TLS certificate whose fingerprint the control node pins when it
//! registers the node (`vmoodle node add`), as SSH pins a host key.

use anyhow::{Context, Result};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

/// A new random token (32 bytes, hex).
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(hex(&b))
}

pub fn token_hash(token: &str) -> String {
    hex(&openssl::sha::sha256(token.trim().as_bytes()))
}

/// Whether `presented` is the token whose hash is `stored` (constant time).
pub fn token_matches(stored_hash: &str, presented: &str) -> bool {
    let h = token_hash(presented);
    h.len() == stored_hash.trim().len()
        && openssl::memcmp::eq(h.as_bytes(), stored_hash.trim().as_bytes())
}

/// A self-signed certificate (RSA 2048, ten years) naming `names` (DNS names or IP addresses)
/// as subject alternative names: (certificate PEM, key PEM).
pub fn self_signed(common_name: &str, names: &[String]) -> Result<(Vec<u8>, Vec<u8>)> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(128, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

/// The SHA-256 fingerprint of a PEM certificate, as `AA:BB:...` (what `openssl x509
/// -fingerprint -sha256` prints).
pub fn fingerprint_pem(pem: &[u8]) -> Result<String> {
    let cert = X509::from_pem(pem).context("not a PEM certificate")?;
    fingerprint(&cert)
}

pub fn fingerprint(cert: &X509) -> Result<String> {
    let d = cert.digest(MessageDigest::sha256())?;
    Ok(d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Normalises a fingerprint the way an operator may paste it (case, colons, a `sha256:` prefix).
pub fn normalise_fingerprint(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_matches_only_its_token() {
        let t = new_token().unwrap();
        let h = token_hash(&t);
        assert!(token_matches(&h, &t));
        assert!(token_matches(&h, &format!("{t}\n")));
        assert!(!token_matches(&h, "nope"));
        assert!(!token_matches(&h, &new_token().unwrap()));
    }

    #[test]
    fn certificate_names_its_addresses_and_fingerprints_stably() {
        let (cert, key) = self_signed("db1", &["10.0.0.1".into(), "db1".into()]).unwrap();
        assert!(String::from_utf8_lossy(&key).contains("PRIVATE KEY"));
        let fp = fingerprint_pem(&cert).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(
            normalise_fingerprint(&fp.to_lowercase()),
            fp.replace(':', "")
        );
        let text = String::from_utf8(X509::from_pem(&cert).unwrap().to_text().unwrap()).unwrap();
        assert!(text.contains("IP Address:10.0.0.1"), "{text}");
        assert!(text.contains("DNS:db1"), "{text}");
    }
}
