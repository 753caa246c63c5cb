//! `vmoodle sql "SELECT ... FROM {user}"`: one read-only query on every selected instance.

use super::fleet::{parse_duration, SelectArgs};
use super::output;
use std::path::Path;
use std::time::Duration;
use vmoodle_ops::fleet::sql::{run_sql, SqlOptions, SqlReport};

/// `vmoodle sql QUERY [selection]`
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs one SQL statement on each selected instance's database, with the instance's own database
account, and prints the rows with an `instance` column first. `{name}` is Moodle's table syntax:
it becomes the instance's prefixed table (`{user}` -> `mdl_user`), quoted.

Read-only by the server, not by vmoodle: the statement runs alone (the server refuses a second
statement after `;`), in a read-only transaction that is rolled back, with a time limit the
server enforces (MariaDB max_statement_time, PostgreSQL statement_timeout). Writes (UPDATE,
DELETE, INSERT, CREATE ...) fail with the server's read-only error and change nothing.

Examples:
  vmoodle sql \"SELECT COUNT(*) AS users FROM {user} WHERE deleted = 0\" --all
  vmoodle sql \"SELECT shortname, fullname FROM {course} WHERE visible = 1\" --match 'school-*' --format csv
  vmoodle sql \"SELECT name, value FROM {config} WHERE name LIKE 'theme%'\" school1 school2 --format json
  vmoodle sql \"SELECT plugin, value FROM {config_plugins} WHERE name = 'version'\" --dbserver db1 --max-rows 500

Exit codes: 0 every site answered, 3 some site failed (bad SQL, time limit, unreachable),
1 nothing could run.")]
pub struct Cmd {
    /// The statement (one; `{table}` for Moodle's tables).
    #[arg(value_name = "SQL")]
    sql: String,
    #[command(flatten)]
    select: SelectArgs,
    /// Output: a table, CSV (with a header) or JSON.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// The statement's time limit on each site (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
    /// Rows kept per site; a site with more is marked truncated.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_rows: u32,
    /// Sites queried at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Same as --format json.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq)]
enum Format {
    Table,
    Csv,
    Json,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        let r = run_sql(
            &home,
            &self.select.selection(),
            &self.sql,
            &SqlOptions {
                parallel: self.parallel.into(),
                timeout: self.timeout,
                max_rows: self.max_rows as usize,
            },
        )
        .await?;
        let format = if self.json { Format::Json } else { self.format };
        match format {
            Format::Json => output::json(&r)?,
            Format::Csv => print_csv(&r)?,
            Format::Table => print_tables(&r),
        }
        for s in &r.sites {
            if let Some(e) = &s.error {
                eprintln!("{}: {}: {e}", s.instance, s.status.word());
            } else if s.truncated {
                eprintln!(
                    "{}: more than {} rows; the rest were not read (--max-rows)",
                    s.instance, self.max_rows
                );
            }
        }
        if !r.disabled_left_out.is_empty() {
            eprintln!(
                "left out (disabled; add --include-disabled): {}",
                r.disabled_left_out.join(", ")
            );
        }
        Ok(r.exit_code() as u8)
    }
}

/// Groups of sites that answered with the same columns (usually one group).
fn groups(r: &SqlReport) -> Vec<(Vec<String>, Vec<usize>)> {
    let mut g: Vec<(Vec<String>, Vec<usize>)> = Vec::new();
    for (i, s) in r.sites.iter().enumerate() {
        if s.error.is_some() {
            continue;
        }
        match g.iter_mut().find(|(c, _)| *c == s.columns) {
            Some((_, v)) => v.push(i),
            None => g.push((s.columns.clone(), vec![i])),
        }
    }
    g
}

fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "NULL".into())
}

fn print_tables(r: &SqlReport) {
    for (cols, idx) in groups(r) {
        let mut headers = vec!["instance".to_string()];
        headers.extend(cols.iter().cloned());
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut rows = Vec::new();
        for i in idx {
            let s = &r.sites[i];
            for row in &s.rows {
                let mut line = vec![s.instance.clone()];
                line.extend(row.iter().map(cell));
                rows.push(line);
            }
        }
        output::table(&h, rows);
    }
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) || v.starts_with(' ') || v.ends_with(' ') {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 4180 CSV; NULL is an empty field.
fn print_csv(r: &SqlReport) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (n, (cols, idx)) in groups(r).into_iter().enumerate() {
        if n > 0 {
            // Another set of columns: a blank line and its own header.
            writeln!(out)?;
        }
        let mut header = vec!["instance".to_string()];
        header.extend(cols);
        write!(out, "{}\r\n", csv_line(&header))?;
        for i in idx {
            let s = &r.sites[i];
            for row in &s.rows {
                let mut line = vec![s.instance.clone()];
                line.extend(row.iter().map(|v| v.clone().unwrap_or_default()));
                write!(out, "{}\r\n", csv_line(&line))?;
            }
        }
    }
    Ok(())
}
