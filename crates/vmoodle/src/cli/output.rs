//! Output: JSON for scripts, tables for people. Data goes to stdout; nothing else does.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A cell as a terminal may show it: control characters (escape sequences a tenant's data could
/// hold) as visible `\u{..}` escapes, the text otherwise untouched.
pub fn cell(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::ASCII_MARKDOWN
    })
    .set_content_arrangement(ContentArrangement::Dynamic)
    .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r.iter().map(|c| cell(c)).collect::<Vec<_>>());
    }
    println!("{t}");
}

/// Key/value lines for `show` commands.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{k:width$}  {v}");
    }
}

pub fn time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
