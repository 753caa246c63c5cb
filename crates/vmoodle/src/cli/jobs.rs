//! `vmoodle jobs list|show|recover`: every change vmoodle makes is a job with a journal; these
//! show what ran, what each step took, what was undone, and recover jobs whose process died.

use anyhow::Result;
use std::path::Path;
use vmoodle_ops::{jobs, Home};
use vmoodle_registry::JobFilter;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List jobs, newest first.
    ///
    /// States: running, recovering, done, rolled back (failed and fully undone), failed (some
    /// of it could not be undone: see `jobs show`), incomplete (past its point of no return;
    /// `jobs recover` finishes it).
    List {
        /// Only jobs in this state (repeatable).
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only jobs of this kind (deploy, delete, snapshot, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs on this target (an instance's shortname, a template's name).
        #[arg(long)]
        target: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one job: its steps with timings, its undo records, what was undone, its error.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Recover jobs whose process is gone (undo them, or finish those past their point of no
    /// return) and retry incomplete ones. Every command that changes the home does the first
    /// part by itself; this is for cron, or after a reboot.
    Recover {
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::List {
                states,
                kind,
                target,
                limit,
                json,
            } => {
                let home = Home::open(root).await?;
                let all = jobs::list(
                    &home,
                    &JobFilter {
                        states,
                        kind,
                        target,
                        limit: Some(limit),
                        ..Default::default()
                    },
                )
                .await?;
                if json {
                    output::json(&all)?;
                } else {
                    output::table(
                        &[
                            "id", "kind", "target", "state", "by", "started", "time", "error",
                        ],
                        all.iter()
                            .map(|j| {
                                vec![
                                    j.id.to_string(),
                                    j.kind.clone(),
                                    j.target.clone(),
                                    j.state.clone(),
                                    j.started_by.clone(),
                                    output::time(j.started_at),
                                    j.finished_at
                                        .map(|f| format!("{} s", f - j.started_at))
                                        .unwrap_or_default(),
                                    j.error
                                        .as_deref()
                                        .map(|e| {
                                            e.lines()
                                                .next()
                                                .unwrap_or("")
                                                .chars()
                                                .take(80)
                                                .collect()
                                        })
                                        .unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    );
                }
                Ok(exit::OK)
            }
            Cmd::Show { id, json } => {
                let home = Home::open(root).await?;
                let j = jobs::show(&home, id).await?;
                if json {
                    output::json(&j)?;
                    return Ok(exit::OK);
                }
                output::fields(&[
                    ("job", j.id.to_string()),
                    ("kind", j.kind.clone()),
                    ("target", j.target.clone()),
                    ("state", j.state.clone()),
                    ("started by", j.started_by.clone()),
                    ("owner", j.owner.clone()),
                    ("started", output::time(j.started_at)),
                    (
                        "finished",
                        j.finished_at.map(output::time).unwrap_or_default(),
                    ),
                    ("error", j.error.clone().unwrap_or_default()),
                ]);
                println!("\nsteps:");
                for s in &j.steps {
                    println!("  {:<28} {:>7} ms", s.step, s.ms);
                }
                println!("\nundo records (written before each change):");
                for u in &j.undo {
                    println!(
                        "  [{:<11}] {:<22} {}",
                        format!("{:?}", u.state).to_lowercase(),
                        u.step,
                        u.undo
                    );
                }
                if !j.undone.is_empty() {
                    println!("\nundone:");
                    for u in &j.undone {
                        println!("  {u}");
                    }
                }
                Ok(exit::OK)
            }
            Cmd::Recover { json } => {
                let home = super::open_locked(root).await?;
                let mut all = home.recovered.clone();
                all.extend(jobs::recover(&home, true).await?);
                let bad = all.iter().filter(|r| !r.left.is_empty()).count();
                if json {
                    output::json(&all)?;
                } else if all.is_empty() {
                    eprintln!("no interrupted or incomplete jobs");
                }
                Ok(if bad > 0 { exit::PARTIAL } else { exit::OK })
            }
        }
    }
}
