//! Any column of a query vmoodle did not write, as text. Prepared statements return binary
//! values, typed by the server; each type is read as what it is (integers, floats, booleans),
//! or from its raw bytes (strings, decimals, JSON, dates), and shown as the database's own client
//! would show it. A type vmoodle cannot read says so and suggests a cast.

use sqlx::{Column, Row, TypeInfo, ValueRef};

/// One row's values as text (None for NULL).
pub fn my_row(row: &sqlx::mysql::MySqlRow) -> Vec<Option<String>> {
    (0..row.len()).map(|i| my_value(row, i)).collect()
}

/// One row's values as text (None for NULL).
pub fn pg_row(row: &sqlx::postgres::PgRow) -> Vec<Option<String>> {
    (0..row.len()).map(|i| pg_value(row, i)).collect()
}

/// The column names of a row.
pub fn names<R: Row>(row: &R) -> Vec<String> {
    row.columns().iter().map(|c| c.name().to_string()).collect()
}

fn cannot(ty: &str, sql_cast: &str) -> Option<String> {
    Some(format!(
        "(cannot show a {ty} value: cast it in the query, e.g. {sql_cast})"
    ))
}

fn bytes_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("0x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
    }
}

fn my_value(row: &sqlx::mysql::MySqlRow, i: usize) -> Option<String> {
    let raw = row.try_get_raw(i).ok()?;
    if raw.is_null() {
        return None;
    }
    let ty = raw.type_info().name().to_string();
    let unsigned = ty.ends_with("UNSIGNED");
    let base = ty.trim_end_matches(" UNSIGNED");
    match base {
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            if unsigned {
                row.try_get_unchecked::<u64, _>(i)
                    .ok()
                    .map(|v| v.to_string())
            } else {
                row.try_get_unchecked::<i64, _>(i)
                    .ok()
                    .map(|v| v.to_string())
            }
        }
        "FLOAT" => row.try_get::<f32, _>(i).ok().map(|v| v.to_string()),
        "DOUBLE" => row.try_get::<f64, _>(i).ok().map(|v| v.to_string()),
        "DATE" | "DATETIME" | "TIMESTAMP" => {
            let b = row.try_get_unchecked::<&[u8], _>(i).ok()?;
            my_datetime(b, base == "DATE").or_else(|| cannot(base, "CAST(x AS CHAR)"))
        }
        "TIME" => {
            let b = row.try_get_unchecked::<&[u8], _>(i).ok()?;
            my_time(b).or_else(|| cannot(base, "CAST(x AS CHAR)"))
        }
        "BIT" => {
            let b = row.try_get_unchecked::<&[u8], _>(i).ok()?;
            Some(
                b.iter()
                    .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
                    .to_string(),
            )
        }
        // Strings, decimals, enums, sets, JSON, binary strings and blobs: their bytes.
        _ => row
            .try_get_unchecked::<&[u8], _>(i)
            .ok()
            .map(bytes_text)
            .or_else(|| cannot(base, "CAST(x AS CHAR)")),
    }
}

/// MySQL's binary DATE/DATETIME/TIMESTAMP: a length byte, year (u16 LE), month, day, then
/// optionally hour, minute, second and microseconds (u32 LE).
fn my_datetime(b: &[u8], date_only: bool) -> Option<String> {
    let len = *b.first()? as usize;
    let b = &b[1..];
    if len == 0 {
        return Some(if date_only {
            "0000-00-00".into()
        } else {
            "0000-00-00 00:00:00".into()
        });
    }
    if b.len() < len || len < 4 {
        return None;
    }
    let year = u16::from_le_bytes([b[0], b[1]]);
    let date = format!("{year:04}-{:02}-{:02}", b[2], b[3]);
    if date_only {
        return Some(date);
    }
    let (h, m, s) = if len >= 7 {
        (b[4], b[5], b[6])
    } else {
        (0, 0, 0)
    };
    let mut out = format!("{date} {h:02}:{m:02}:{s:02}");
    if len >= 11 {
        let us = u32::from_le_bytes([b[7], b[8], b[9], b[10]]);
        if us > 0 {
            out.push_str(&format!(".{us:06}"));
        }
    }
    Some(out)
}

/// MySQL's binary TIME: a length byte, sign, days (u32 LE), hour, minute, second, microseconds.
fn my_time(b: &[u8]) -> Option<String> {
    let len = *b.first()? as usize;
    let b = &b[1..];
    if len == 0 {
        return Some("00:00:00".into());
    }
    if b.len() < len || len < 8 {
        return None;
    }
    let neg = b[0] == 1;
    let days = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    let hours = days * 24 + u32::from(b[5]);
    let mut out = format!(
        "{}{hours:02}:{:02}:{:02}",
        if neg { "-" } else { "" },
        b[6],
        b[7]
    );
    if len >= 12 {
        let us = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if us > 0 {
            out.push_str(&format!(".{us:06}"));
        }
    }
    Some(out)
}

fn pg_value(row: &sqlx::postgres::PgRow, i: usize) -> Option<String> {
    let raw = row.try_get_raw(i).ok()?;
    if raw.is_null() {
        return None;
    }
    let ty = raw.type_info().name().to_string();
    let text = raw.format() == sqlx::postgres::PgValueFormat::Text;
    let bytes = raw.as_bytes().ok()?;
    if text {
        return Some(bytes_text(bytes));
    }
    let be = |n: usize| -> Option<&[u8]> { (bytes.len() == n).then_some(bytes) };
    match ty.as_str() {
        "BOOL" => Some(if bytes.first() == Some(&1) { "t" } else { "f" }.into()),
        "INT2" => be(2).map(|b| i16::from_be_bytes([b[0], b[1]]).to_string()),
        "INT4" => be(4).map(|b| i32::from_be_bytes(b.try_into().unwrap()).to_string()),
        "OID" => be(4).map(|b| u32::from_be_bytes(b.try_into().unwrap()).to_string()),
        "INT8" => be(8).map(|b| i64::from_be_bytes(b.try_into().unwrap()).to_string()),
        "FLOAT4" => be(4).map(|b| f32::from_be_bytes(b.try_into().unwrap()).to_string()),
        "FLOAT8" => be(8).map(|b| f64::from_be_bytes(b.try_into().unwrap()).to_string()),
        "NUMERIC" => pg_numeric(bytes),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" | "CITEXT" | "JSON" | "XML" => {
            Some(bytes_text(bytes))
        }
        // JSONB: a version byte, then the text.
        "JSONB" => bytes.get(1..).map(bytes_text),
        "CHAR" => bytes.first().map(|c| (*c as char).to_string()),
        "BYTEA" => {
            let mut s = String::from("\\x");
            for x in bytes {
                s.push_str(&format!("{x:02x}"));
            }
            Some(s)
        }
        "DATE" => be(4).map(|b| civil(i64::from(i32::from_be_bytes(b.try_into().unwrap())))),
        "TIMESTAMP" | "TIMESTAMPTZ" => be(8).map(|b| {
            let us = i64::from_be_bytes(b.try_into().unwrap());
            let secs = us.div_euclid(1_000_000);
            let frac = us.rem_euclid(1_000_000);
            let day = secs.div_euclid(86_400);
            let sod = secs.rem_euclid(86_400);
            let mut s = format!(
                "{} {:02}:{:02}:{:02}",
                civil(day),
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            );
            if frac > 0 {
                s.push_str(&format!(".{frac:06}"));
            }
            if ty == "TIMESTAMPTZ" {
                s.push_str("+00");
            }
            s
        }),
        "UUID" => be(16).map(|b| {
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }),
        other => cannot(other, "x::text"),
    }
    .or_else(|| cannot(&ty, "x::text"))
}

/// A date from days since 2000-01-01 (PostgreSQL's epoch), proleptic Gregorian.
fn civil(days_since_2000: i64) -> String {
    let z = days_since_2000 + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale (i16/u16 BE), then base-10000
/// digits; the weight is the power of 10000 of the first digit.
fn pg_numeric(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let rd = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let ndigits = rd(0) as usize;
    let weight = rd(2) as i16 as i64;
    let sign = rd(4);
    let dscale = rd(6) as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    if b.len() < 8 + ndigits * 2 {
        return None;
    }
    let digits: Vec<u16> = (0..ndigits).map(|k| rd(8 + k * 2)).collect();
    let digit = |pos: i64| -> u16 {
        if pos < 0 || pos as usize >= digits.len() {
            0
        } else {
            digits[pos as usize]
        }
    };
    let mut int = String::new();
    if weight < 0 {
        int.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                int.push_str(&digit(k).to_string());
            } else {
                int.push_str(&format!("{:04}", digit(k)));
            }
        }
    }
    let mut frac = String::new();
    let mut k = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(k)));
        k += 1;
    }
    frac.truncate(dscale);
    let neg = sign == 0x4000;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(&int);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(ndigits: u16, weight: i16, sign: u16, dscale: u16, d: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ndigits.to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for x in d {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        // 12345.678 = 1 2345 . 6780
        assert_eq!(
            pg_numeric(&num(3, 1, 0, 3, &[1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        assert_eq!(pg_numeric(&num(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(
            pg_numeric(&num(1, -1, 0x4000, 5, &[50])).unwrap(),
            "-0.00500"
        );
        assert_eq!(pg_numeric(&num(1, 1, 0, 0, &[7])).unwrap(), "70000");
    }

    #[test]
    fn dates() {
        assert_eq!(civil(0), "2000-01-01");
        assert_eq!(civil(-10_957), "1970-01-01");
        assert_eq!(
            my_datetime(&[7, 0xEA, 0x07, 11, 23, 6, 40, 5], false).unwrap(),
            "2026-11-23 06:40:05"
        );
        assert_eq!(
            my_datetime(&[4, 0xEA, 0x07, 11, 23], true).unwrap(),
            "2026-11-23"
        );
        assert_eq!(my_time(&[8, 1, 1, 0, 0, 0, 2, 3, 4]).unwrap(), "-26:03:04");
    }
}
