//! `vmoodle mnet keys|init|bind|unbind|peer|unpeer|renew|status|repair`.

use anyhow::{bail, Result};
use std::path::Path;
use vmoodle_ops::caches::{self, CacheReport};
use vmoodle_ops::mnet::{self, InstanceError, RenewWhat};
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show an instance's MNET key: fingerprint, subject, expiry, history.
    Keys {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Give an instance a fresh key pair (the old one goes into the history) and turn MNET on;
    /// its peers learn the new key.
    Init { instance: String },
    /// Join subnetwork N: become a peer of every member (SSO both ways where the services exist).
    Bind {
        instance: String,
        #[arg(long)]
        subnetwork: i64,
    },
    /// Leave the subnetwork: the peer rows vmoodle made go, nothing else.
    Unbind { instance: String },
    /// Make two instances peers; with --all, A and every instance that has MNET on (e.g.
    /// `vmoodle mnet peer master --all`).
    Peer {
        a: String,
        #[arg(required_unless_present = "all")]
        b: Option<String>,
        #[arg(long, conflicts_with = "b")]
        all: bool,
    },
    /// Undo `peer`: the rows vmoodle made on each side go.
    Unpeer { a: String, b: String },
    /// Renew keys and update every peer. Safe to run from cron every few minutes with --due.
    ///
    /// --due renews only keys expiring within mnet.lookforward_hours, and only inside the
    /// renewal window (mnet.renew_time, mnet.renew_window_minutes, UTC), when mnet.autorenew
    /// is on. Every run also finishes an earlier run that was interrupted.
    Renew {
        /// Renew what is due (for cron).
        #[arg(long, conflicts_with_all = ["all", "instance"])]
        due: bool,
        /// Renew every MNET instance now.
        #[arg(long, conflicts_with = "instance")]
        all: bool,
        /// Renew this instance now.
        instance: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Per instance: key expiry and whether renewal is due; per peer pair: whether each side
    /// holds the other's current key.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Mend every stale or missing peer row.
    Repair {
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::Keys { instance, json } => {
                let home = Home::open(root).await?;
                let k = mnet::keys(&home, &instance).await?;
                if json {
                    output::json(&k)?;
                } else {
                    let mut f = vec![
                        ("instance", k.instance.clone()),
                        ("wwwroot", k.wwwroot.clone()),
                        (
                            "mnet",
                            format!(
                                "{} (dispatcher: {})",
                                k.mnet_mode,
                                k.dispatcher.clone().unwrap_or_else(|| "unset".into())
                            ),
                        ),
                    ];
                    match &k.current {
                        Some(c) => {
                            f.push(("subject", c.subject.clone()));
                            f.push(("fingerprint", c.fingerprint_sha256.clone()));
                            f.push(("expires", output::time(c.not_after)));
                            f.push(("key matches", k.private_key_matches.to_string()));
                            f.push((
                                "mnet_host row",
                                if k.local_row_current {
                                    "current"
                                } else {
                                    "STALE"
                                }
                                .into(),
                            ));
                        }
                        None => f.push(("key", "none (vmoodle mnet init)".into())),
                    }
                    for h in &k.history {
                        f.push((
                            "history",
                            format!(
                                "expired/expires {} {}",
                                output::time(h.expires),
                                h.fingerprint_sha256
                            ),
                        ));
                    }
                    output::fields(&f);
                }
            }
            Cmd::Init { instance } => {
                let home = super::open_locked(root).await?;
                let r = mnet::as_job(
                    &home,
                    "mnet init",
                    &instance,
                    vec![instance.clone()],
                    mnet::init(&home, &instance),
                )
                .await?;
                let c = &r.certificate;
                eprintln!(
                    "new MNET key for `{instance}`: {} (expires {})",
                    c.fingerprint_sha256,
                    output::time(c.not_after)
                );
                let bad = report_errors(&r.repair.errors) | report_caches(&r.caches);
                if bad {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Bind {
                instance,
                subnetwork,
            } => {
                let home = super::open_locked(root).await?;
                let members = members_of(&home, subnetwork, &instance).await?;
                let r = mnet::as_job(
                    &home,
                    "mnet bind",
                    &instance,
                    members,
                    mnet::bind(&home, &instance, subnetwork),
                )
                .await?;
                let peers = r.peers;
                eprintln!(
                    "`{instance}` is in subnetwork {subnetwork}; peers: {}",
                    if peers.is_empty() {
                        "none yet".into()
                    } else {
                        peers.join(", ")
                    }
                );
                if report_caches(&caches::invalidate_config(&home, &r.keyed).await) {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Unbind { instance } => {
                let home = super::open_locked(root).await?;
                let gone = mnet::as_job(
                    &home,
                    "mnet unbind",
                    &instance,
                    vec![instance.clone()],
                    mnet::unbind(&home, &instance),
                )
                .await?;
                eprintln!(
                    "`{instance}` left its subnetwork; peerings removed: {}",
                    if gone.is_empty() {
                        "none".into()
                    } else {
                        gone.join(", ")
                    }
                );
            }
            Cmd::Peer { a, b, all } => {
                let home = super::open_locked(root).await?;
                let others: Vec<String> = match b {
                    Some(b) => vec![b],
                    None => {
                        let me = home.registry.instance(&a).await?;
                        home.registry
                            .instances()
                            .await?
                            .into_iter()
                            .filter(|i| i.id != me.id && i.mnet >= 0)
                            .map(|i| i.shortname)
                            .collect()
                    }
                };
                if all && others.is_empty() {
                    eprintln!("no other instance has MNET on");
                }
                let mut involved = others.clone();
                involved.push(a.clone());
                let keyed = mnet::as_job(&home, "mnet peer", &a, involved, async {
                    let mut keyed = Vec::new();
                    for b in &others {
                        keyed.extend(mnet::peer(&home, &a, b).await?);
                        eprintln!("`{a}` and `{b}` are peers");
                    }
                    anyhow::Ok(keyed)
                })
                .await?;
                if report_caches(&caches::invalidate_config(&home, &keyed).await) {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Unpeer { a, b } => {
                let home = super::open_locked(root).await?;
                mnet::as_job(
                    &home,
                    "mnet unpeer",
                    &a,
                    vec![a.clone(), b.clone()],
                    mnet::unpeer(&home, &a, &b),
                )
                .await?;
                eprintln!("`{a}` and `{b}` are no longer peers");
            }
            Cmd::Renew {
                due,
                all,
                instance,
                json,
            } => {
                let what = match (due, all, instance) {
                    (true, _, _) => RenewWhat::Due,
                    (_, true, _) => RenewWhat::All,
                    (_, _, Some(x)) => RenewWhat::One(x),
                    _ => bail!("say what to renew: --due (for cron), --all, or an instance"),
                };
                let home = super::open_locked(root).await?;
                let r = mnet::renew(&home, what).await?;
                if json {
                    output::json(&r)?;
                    if !r.ok() {
                        return Ok(exit::PARTIAL);
                    }
                } else {
                    if let Some(s) = &r.skipped {
                        eprintln!("nothing renewed: {s}");
                    }
                    eprintln!(
                        "renewed: {}; peer rows mended: {}",
                        if r.renewed.is_empty() {
                            "none".into()
                        } else {
                            r.renewed.join(", ")
                        },
                        r.mended.len()
                    );
                    for d in &r.left_deleted {
                        eprintln!("{d}");
                    }
                    let bad = report_errors(&r.errors) | report_caches(&r.caches);
                    if bad {
                        return Ok(exit::PARTIAL);
                    }
                }
            }
            Cmd::Status { json } => {
                let home = Home::open(root).await?;
                let st = mnet::status(&home).await?;
                let bad = st.pairs.iter().filter(|p| !p.ok()).count();
                // MNET seals every call with RC4, which OpenSSL 3 keeps in its legacy provider:
                // said, with the fix (the exit code is about keys and peers; `doctor` fails on it).
                let rc4 = match home.executable("php") {
                    Ok(php) if st.instances.iter().any(|i| i.mnet >= 0) => Some(
                        vmoodle_site::php_env::rc4(&php, None)
                            .await
                            .map_err(|e| e.to_string()),
                    ),
                    _ => None,
                };
                if json {
                    let mut v = serde_json::to_value(&st)?;
                    v["rc4"] = match &rc4 {
                        Some(Ok(r)) => serde_json::to_value(r)?,
                        Some(Err(e)) => serde_json::json!({ "error": e }),
                        None => serde_json::Value::Null,
                    };
                    output::json(&v)?;
                } else {
                    output::table(
                        &["instance", "mnet", "key expires", "renewal"],
                        st.instances
                            .iter()
                            .map(|i| {
                                vec![
                                    i.instance.clone(),
                                    vmoodle_core::MnetMode(i.mnet).describe(),
                                    i.expires
                                        .map(output::time)
                                        .unwrap_or_else(|| "no key".into()),
                                    if i.due { "due" } else { "" }.into(),
                                ]
                            })
                            .collect(),
                    );
                    output::table(
                        &["a", "b", "a holds b's key", "b holds a's key"],
                        st.pairs
                            .iter()
                            .map(|p| {
                                let yn = |holds: bool, deleted: bool| {
                                    match (holds, deleted) {
                                        (true, _) => "yes",
                                        (false, true) => "deleted by its admin",
                                        (false, false) => "STALE",
                                    }
                                    .to_string()
                                };
                                vec![
                                    p.a.clone(),
                                    p.b.clone(),
                                    yn(p.a_holds_b, p.a_deleted_b),
                                    yn(p.b_holds_a, p.b_deleted_a),
                                ]
                            })
                            .collect(),
                    );
                    if bad > 0 {
                        eprintln!("{bad} peer pair(s) hold a stale or missing key: `vmoodle mnet repair` mends them");
                    }
                }
                let unreadable = if json {
                    !st.errors.is_empty()
                } else {
                    report_errors(&st.errors)
                };
                if let Some(Ok(r)) = &rc4 {
                    if !r.ok() && !json {
                        eprintln!(
                            "PHP's OpenSSL ({}) cannot seal with RC4, so every MNET call fails (\"mnet/encryption-invalid\"): {}\nfix:\n{}",
                            r.openssl,
                            r.error.clone().unwrap_or_default(),
                            vmoodle_site::php_env::RC4_FIX
                        );
                    }
                }
                if bad > 0 || unreadable {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Repair { json } => {
                let home = super::open_locked(root).await?;
                let r = mnet::repair(&home).await?;
                if json {
                    output::json(&r)?;
                } else {
                    for m in r.mended.iter().chain(&r.left_deleted) {
                        eprintln!("{m}");
                    }
                    eprintln!("{} peer row(s) mended", r.mended.len());
                    report_errors(&r.errors);
                }
                if !r.errors.is_empty() {
                    return Ok(exit::PARTIAL);
                }
            }
        }
        Ok(exit::OK)
    }
}

/// Prints what failed per instance; true when something did.
fn report_errors(errors: &[InstanceError]) -> bool {
    for e in errors {
        eprintln!("error: `{}`: {}", e.instance, e.error);
    }
    !errors.is_empty()
}

/// Prints each instance whose Moodle caches were not invalidated, with the command to run; true
/// when there was one.
fn report_caches(r: &CacheReport) -> bool {
    for line in r.failure_lines() {
        eprintln!("error: {line}");
    }
    !r.ok()
}

/// The instance and the members of subnetwork `n` (the sites a bind touches).
async fn members_of(
    home: &vmoodle_ops::Home,
    n: i64,
    instance: &str,
) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.mnet == n)
        .map(|i| i.shortname)
        .collect();
    v.push(instance.to_string());
    Ok(v)
}
