//! Moodle Network keys, in Moodle's own format (mnet/lib.php `mnet_generate_keypair`,
//! mnet/environment.php `get_keypair` / `replace_keys`):
//! - an RSA key and a self-signed X.509 certificate whose subject has commonName = the first 64
//!   characters of wwwroot and a subjectAltName attribute = wwwroot, valid 28 days (or
//!   `$CFG->mnetkeylifetime`);
//! - stored in config_plugins (plugin `mnet`, name `openssl`) as certificate + `@@@@@@@@` +
//!   private key; older pairs in `openssl_history`, a PHP-serialized array of
//!   `['certificate', 'keypair_PEM', 'expires']`, newest first, trimmed to `openssl_generations`
//!   (default 3);
//! - the local `mnet_host` row (id = `mnet_localhost_id`) holds public_key (the certificate)
//!   and public_key_expires.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use serde::Serialize;

pub const SEPARATOR: &str = "@@@@@@@@";
pub const DEFAULT_LIFETIME_DAYS: u32 = 28;
pub const DEFAULT_GENERATIONS: usize = 3;

/// A key pair as Moodle stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keypair {
    pub certificate: String,
    pub private_key: String,
}

/// One pair of the history, with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub certificate: String,
    pub private_key: String,
    pub expires: i64,
}

/// What `vmoodle mnet keys` shows of a certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub common_name: String,
    pub subject_alt_name: String,
    pub fingerprint_sha256: String,
    pub not_after: i64,
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A new key pair for a site, as `mnet_generate_keypair()` makes it (with its defaults for
/// the location fields, which Moodle takes from the current user when there is one).
pub fn generate(
    wwwroot: &str,
    site_name: &str,
    email: &str,
    days: u32,
) -> Result<Keypair, openssl::error::ErrorStack> {
    let rsa = Rsa::generate(2048)?;
    let key = PKey::from_rsa(rsa)?;
    let mut name = X509NameBuilder::new()?;
    let cn = cut(wwwroot, 64);
    let cn = cn.strip_suffix('/').unwrap_or(&cn).to_string();
    name.append_entry_by_nid(Nid::COUNTRYNAME, "NZ")?;
    name.append_entry_by_nid(Nid::STATEORPROVINCENAME, "Wellington")?;
    name.append_entry_by_nid(Nid::LOCALITYNAME, "Wellington")?;
    name.append_entry_by_nid(
        Nid::ORGANIZATIONNAME,
        &cut(
            if site_name.is_empty() {
                "Moodle"
            } else {
                site_name
            },
            64,
        ),
    )?;
    name.append_entry_by_nid(Nid::ORGANIZATIONALUNITNAME, "Moodle")?;
    name.append_entry_by_nid(Nid::COMMONNAME, &cn)?;
    name.append_entry_by_nid(Nid::SUBJECT_ALT_NAME, wwwroot)?;
    name.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, &cut(email, 128))?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = BigNum::from_u32(0)?.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(days)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();
    Ok(Keypair {
        certificate: String::from_utf8(cert.to_pem()?).expect("PEM is ASCII"),
        private_key: String::from_utf8(key.private_key_to_pem_pkcs8()?).expect("PEM is ASCII"),
    })
}

/// `certificate@@@@@@@@private key`, as config_plugins mnet/openssl holds it.
pub fn to_config(k: &Keypair) -> String {
    format!("{}{SEPARATOR}{}", k.certificate, k.private_key)
}

pub fn from_config(value: &str) -> Option<Keypair> {
    let (c, k) = value.split_once(SEPARATOR)?;
    Some(Keypair {
        certificate: c.to_string(),
        private_key: k.to_string(),
    })
}

/// Subject names, fingerprint and expiry of a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, openssl::error::ErrorStack> {
    let cert = X509::from_pem(pem.as_bytes())?;
    let get = |nid: Nid| {
        cert.subject_name()
            .entries_by_nid(nid)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .unwrap_or_default()
    };
    let subject = cert
        .subject_name()
        .entries()
        .map(|e| {
            format!(
                "{}={}",
                e.object().nid().short_name().unwrap_or("?"),
                e.data().to_string().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let fp = cert.digest(MessageDigest::sha256())?;
    Ok(CertInfo {
        subject,
        common_name: get(Nid::COMMONNAME),
        subject_alt_name: get(Nid::SUBJECT_ALT_NAME),
        fingerprint_sha256: fp
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        not_after: asn1_to_unix(cert.not_after())?,
    })
}

fn asn1_to_unix(t: &openssl::asn1::Asn1TimeRef) -> Result<i64, openssl::error::ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Whether the private key belongs to the certificate.
pub fn key_matches(k: &Keypair) -> bool {
    let (Ok(cert), Ok(key)) = (
        X509::from_pem(k.certificate.as_bytes()),
        PKey::private_key_from_pem(k.private_key.as_bytes()),
    ) else {
        return false;
    };
    cert.public_key()
        .map(|p| p.public_eq(&key))
        .unwrap_or(false)
}

// ---- PHP serialize() of the history ---------------------------------------------------------

fn php_str(out: &mut String, s: &str) {
    out.push_str(&format!("s:{}:\"{}\";", s.len(), s));
}

/// `serialize()` of the history array, as PHP writes it.
pub fn serialize_history(h: &[HistoryEntry]) -> String {
    let mut out = format!("a:{}:{{", h.len());
    for (i, e) in h.iter().enumerate() {
        out.push_str(&format!("i:{i};a:3:{{"));
        php_str(&mut out, "certificate");
        php_str(&mut out, &e.certificate);
        php_str(&mut out, "keypair_PEM");
        php_str(&mut out, &e.private_key);
        php_str(&mut out, "expires");
        out.push_str(&format!("i:{};", e.expires));
        out.push('}');
    }
    out.push('}');
    out
}

/// Reads a serialized history (what Moodle and vmoodle write). Unknown shapes give None.
pub fn parse_history(s: &str) -> Option<Vec<HistoryEntry>> {
    let b = s.as_bytes();
    let mut p = 0usize;
    fn expect(b: &[u8], p: &mut usize, lit: &str) -> Option<()> {
        if b.get(*p..*p + lit.len())? == lit.as_bytes() {
            *p += lit.len();
            Some(())
        } else {
            None
        }
    }
    fn number(b: &[u8], p: &mut usize, end: u8) -> Option<i64> {
        let start = *p;
        while *b.get(*p)? != end {
            *p += 1;
        }
        let n = std::str::from_utf8(&b[start..*p]).ok()?.parse().ok()?;
        *p += 1;
        Some(n)
    }
    fn string(b: &[u8], p: &mut usize) -> Option<String> {
        expect(b, p, "s:")?;
        let len = number(b, p, b':')? as usize;
        expect(b, p, "\"")?;
        let v = std::str::from_utf8(b.get(*p..*p + len)?).ok()?.to_string();
        *p += len;
        expect(b, p, "\";")?;
        Some(v)
    }
    expect(b, &mut p, "a:")?;
    let n = number(b, &mut p, b':')?;
    expect(b, &mut p, "{")?;
    let mut out = Vec::new();
    for _ in 0..n {
        expect(b, &mut p, "i:")?;
        number(b, &mut p, b';')?;
        expect(b, &mut p, "a:")?;
        let fields = number(b, &mut p, b':')?;
        expect(b, &mut p, "{")?;
        let mut e = HistoryEntry {
            certificate: String::new(),
            private_key: String::new(),
            expires: 0,
        };
        for _ in 0..fields {
            let k = string(b, &mut p)?;
            if b.get(p..p + 2)? == b"i:" {
                p += 2;
                let v = number(b, &mut p, b';')?;
                if k == "expires" {
                    e.expires = v;
                }
            } else {
                let v = string(b, &mut p)?;
                match k.as_str() {
                    "certificate" => e.certificate = v,
                    "keypair_PEM" => e.private_key = v,
                    _ => {}
                }
            }
        }
        expect(b, &mut p, "}")?;
        out.push(e);
    }
    expect(b, &mut p, "}")?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_names_and_match() {
        let k = generate(
            "https://school1.moodle.example.org",
            "School One",
            "noreply@school1.moodle.example.org",
            28,
        )
        .unwrap();
        let info = cert_info(&k.certificate).unwrap();
        assert_eq!(info.common_name, "https://school1.moodle.example.org");
        assert_eq!(info.subject_alt_name, "https://school1.moodle.example.org");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((info.not_after - now - 28 * 86_400).abs() < 120);
        assert!(key_matches(&k));
        let back = from_config(&to_config(&k)).unwrap();
        assert_eq!(back, k);
        let long = format!("https://{}.example.org", "a".repeat(80));
        let info = cert_info(&generate(&long, "x", "e@x", 1).unwrap().certificate).unwrap();
        assert_eq!(info.common_name.len(), 64);
    }

    #[test]
    fn history_round_trip() {
        let h = vec![
            HistoryEntry {
                certificate: "C1\n".into(),
                private_key: "K1\n".into(),
                expires: 10,
            },
            HistoryEntry {
                certificate: "C2".into(),
                private_key: "K2".into(),
                expires: 20,
            },
        ];
        let s = serialize_history(&h);
        assert_eq!(
            s,
            "a:2:{i:0;a:3:{s:11:\"certificate\";s:3:\"C1\n\";s:11:\"keypair_PEM\";s:3:\"K1\n\";s:7:\"expires\";i:10;}i:1;a:3:{s:11:\"certificate\";s:2:\"C2\";s:11:\"keypair_PEM\";s:2:\"K2\";s:7:\"expires\";i:20;}}"
        );
        assert_eq!(parse_history(&s).unwrap(), h);
        assert_eq!(parse_history("a:0:{}").unwrap(), vec![]);
        assert!(parse_history("garbage").is_none());
    }
}
