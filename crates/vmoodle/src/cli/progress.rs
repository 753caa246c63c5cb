//! Progress for long work: bars on a terminal (one per running item and an overall one), plain
//! lines on stderr otherwise. Never on stdout.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

pub struct Progress {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    /// `total` items are coming (0 for a single, unnamed operation).
    pub fn new(total: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        if !tty {
            return Self {
                multi: None,
                overall: None,
                bars: Mutex::new(HashMap::new()),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = (total > 1).then(|| {
            let b = multi.add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}")
                    .expect("style")
                    .progress_chars("=> "),
            );
            b.set_prefix("overall");
            b
        });
        Self {
            multi: Some(multi),
            overall,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Item `item` reached step `n` of `total`.
    pub fn step(&self, item: &str, n: usize, total: usize, what: &str) {
        let Some(multi) = &self.multi else {
            eprintln!("{item}: [{n}/{total}] {what}");
            return;
        };
        let mut bars = self.bars.lock().expect("progress lock");
        let bar = bars.entry(item.to_string()).or_insert_with(|| {
            let b = multi.insert_from_back(
                if self.overall.is_some() { 1 } else { 0 },
                ProgressBar::new(total as u64),
            );
            b.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:20}] {msg}")
                    .expect("style")
                    .progress_chars("=> "),
            );
            b.set_prefix(item.to_string());
            b
        });
        bar.set_position(n as u64);
        bar.set_message(what.to_string());
        if n >= total {
            bar.finish_and_clear();
            bars.remove(item);
        }
    }

    /// One item finished (well or not).
    pub fn item_done(&self, item: &str) {
        if let Some(b) = self.bars.lock().expect("progress lock").remove(item) {
            b.finish_and_clear();
        }
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }

    /// Draws a job event: a bar per job (named by its target), plain lines without a terminal.
    pub fn event(&self, e: &vmoodle_ops::journal::JobEvent) {
        use vmoodle_ops::journal::JobEvent as E;
        match e {
            E::Step {
                target,
                n,
                total,
                name,
                ..
            } => {
                if self.multi.is_none() {
                    // Plain lines: which step is starting.
                    eprintln!("{target}: [{n}/{total}] {name}");
                } else {
                    // A bar: how many steps are done.
                    self.step(target, *n - 1, *total, name);
                }
            }
            E::Count {
                target,
                done,
                total,
                what,
                ..
            } => {
                if self.multi.is_none() {
                    eprintln!("{target}: {what} ({done}/{total})");
                } else if let Some(b) = self.bars.lock().expect("progress lock").get(target) {
                    b.set_message(format!("{what} ({done}/{total})"));
                }
            }
            E::Undoing { target, what, .. } => {
                if self.multi.is_none() {
                    eprintln!("{target}: undoing: {what}");
                } else if let Some(b) = self.bars.lock().expect("progress lock").get(target) {
                    b.set_message(format!("undoing: {what}"));
                }
            }
            E::Finished { target, state, .. } => {
                if self.multi.is_none() && state != "done" {
                    eprintln!("{target}: {state}");
                }
                self.item_done(target);
            }
            _ => {}
        }
    }

    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        for (_, b) in self.bars.lock().expect("progress lock").drain() {
            b.finish_and_clear();
        }
    }
}
