//! Output: JSON for scripts, tables for people. Data goes to stdout; nothing else does.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
        t.add_row(r);
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
