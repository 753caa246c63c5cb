//! The journal of a job: every step that changed the world is recorded with how to undo it, in
//! the register's jobs table as it happens, and undone in reverse order when a later step fails,
//! so a failed deploy leaves no database, user, directory or register row behind.

use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use vmoodle_dbserver::ConnSpec;

use crate::Home;

/// How to take back one change.
#[derive(Debug, Clone)]
pub enum Undo {
    DropDatabase(ConnSpec, String),
    DropUser(ConnSpec, String),
    RemoveDir(PathBuf),
    Unregister(i64, String),
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: String,
    pub ms: u128,
}

/// A running job.
pub struct Journal<'h> {
    home: &'h Home,
    id: i64,
    undo: Vec<Undo>,
    pub steps: Vec<StepRecord>,
    started: Instant,
    step_started: Instant,
}

impl<'h> Journal<'h> {
    pub async fn start(home: &'h Home, kind: &str, target: &str) -> anyhow::Result<Journal<'h>> {
        let id = home.registry.start_job(kind, target).await?;
        Ok(Self {
            home,
            id,
            undo: Vec::new(),
            steps: Vec::new(),
            started: Instant::now(),
            step_started: Instant::now(),
        })
    }

    /// Records something to undo if the job fails.
    pub fn did(&mut self, u: Undo) {
        self.undo.push(u);
    }

    /// Marks the end of a step.
    pub async fn step_done(&mut self, step: &str) {
        self.steps.push(StepRecord {
            step: step.to_string(),
            ms: self.step_started.elapsed().as_millis(),
        });
        self.step_started = Instant::now();
        let _ = self
            .home
            .registry
            .update_job(self.id, "running", &self.journal_json(), None)
            .await;
    }

    pub fn elapsed_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    fn journal_json(&self) -> String {
        serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".into())
    }

    pub async fn finish(self) {
        let _ = self
            .home
            .registry
            .update_job(self.id, "done", &self.journal_json(), None)
            .await;
    }

    /// Undoes everything done so far, newest first; returns what could not be undone.
    pub async fn fail(self, error: &str) -> Vec<String> {
        let mut left = Vec::new();
        for u in self.undo.iter().rev() {
            let r: anyhow::Result<()> = match u {
                Undo::DropDatabase(spec, db) => vmoodle_dbserver::admin::drop_database(spec, db)
                    .await
                    .map_err(Into::into),
                Undo::DropUser(spec, user) => vmoodle_dbserver::admin::drop_user(spec, user)
                    .await
                    .map_err(Into::into),
                Undo::RemoveDir(p) => std::fs::remove_dir_all(p)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(Into::into),
                Undo::Unregister(id, host) => match self.home.registry.remove_instance(*id).await {
                    Ok(()) => crate::publish::remove_host_file(self.home, host),
                    Err(e) => Err(e.into()),
                },
            };
            if let Err(e) = r {
                left.push(format!("{u:?}: {e:#}").replace('\n', " "));
            }
        }
        let state = if left.is_empty() {
            "rolled back"
        } else {
            "failed"
        };
        let _ = self
            .home
            .registry
            .update_job(self.id, state, &self.journal_json(), Some(error))
            .await;
        left
    }
}
