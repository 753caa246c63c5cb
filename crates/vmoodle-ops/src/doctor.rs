//! `vmoodle doctor`: everything a working fleet needs, checked one by one, each failure with the
//! exact command or change that fixes it: php-cli and the extensions Moodle needs (the database
//! ones per the servers registered), max_input_vars, RC4 for MNET, the hook in the master's
//! config.php, hook.php and host files readable by the web server's user, dataroots writable by
//! it, and every database server reachable. Read-only: it changes nothing.

use nix::unistd::{Gid, Uid, User};
use serde::Serialize;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmoodle_registry::Instance;
use vmoodle_site::{hook, hostfile, php_env};

use crate::{dbservers, Home};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    /// Not checked: what it needs is missing (said in `detail`).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// A stable name: `php`, `php extension intl`, `host file HOST`, `dataroot SHORTNAME`...
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to run or change when it failed.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The master's Moodle directory (default: the config.php `master set` read).
    pub moodle_dir: Option<PathBuf>,
    /// A php.ini to check instead of php-cli's (php-fpm's, e.g. /etc/php/8.2/fpm/php.ini).
    pub php_ini: Option<PathBuf>,
}

struct Checks(Vec<Check>);

impl Checks {
    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail, None);
    }
    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Fail, detail, Some(fix.into()));
    }
    fn skip(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(name, Status::Skip, detail, None);
    }
    fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }
}

/// Runs every check.
pub async fn run(home: &Home, opts: &Options) -> anyhow::Result<Report> {
    let mut c = Checks(Vec::new());
    let servers = home.registry.dbservers().await?;
    let instances = home.registry.instances().await?;
    php_checks(home, opts, &servers, &mut c).await;
    let web = web_user(home, &mut c);
    hook_checks(home, opts, &instances, web.as_ref(), &mut c);
    file_checks(home, &instances, web.as_ref(), &mut c);
    for s in &servers {
        let name = format!("database server {}", s.name);
        let spec = match dbservers::admin_spec(home, s) {
            Ok(spec) => spec,
            Err(e) => {
                c.fail(name, format!("{e:#}"), format!("the stored administrator password cannot be opened with this home's secret.key; restore the home's secret.key, or `vmoodle dbserver remove {}` and add it again", s.name));
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_secs(15), vmoodle_dbserver::check(&spec)).await {
            Ok(Ok(r)) => c.ok(name, format!("{} {} at {}", s.kind, r.version, r.address)),
            Ok(Err(e)) => c.fail(
                name,
                e.to_string(),
                format!("start the {} server at {} (or let this machine and its administrator account `{}` in), then `vmoodle dbserver check {}`", s.kind, spec.address(), spec.user, s.name),
            ),
            Err(_) => c.fail(
                name,
                format!("no answer from {} within 15 s", spec.address()),
                format!("check that the {} server at {} runs and that this machine may reach it (firewall)", s.kind, spec.address()),
            ),
        }
    }
    let ok = c.0.iter().all(|k| k.status != Status::Fail);
    Ok(Report { ok, checks: c.0 })
}

async fn php_checks(
    home: &Home,
    opts: &Options,
    servers: &[vmoodle_registry::DbServer],
    c: &mut Checks,
) {
    let php = match home.executable("php") {
        Ok(p) => p,
        Err(e) => {
            c.fail(
                "php",
                e.to_string(),
                "apt-get install php-cli (or `vmoodle settings set executables.php /path/to/php`)",
            );
            return;
        }
    };
    let probe_opts = php_env::ProbeOptions {
        ini: opts.php_ini.clone(),
        openssl_conf: None,
    };
    let env = match php_env::probe(&php, &probe_opts).await {
        Ok(e) => e,
        Err(e) => {
            c.fail(
                "php",
                format!("{} does not run: {e}", php.display()),
                "run it by hand to see why: `php -v`",
            );
            return;
        }
    };
    let ini = env.ini.clone().unwrap_or_else(|| "no php.ini".into());
    c.ok(
        "php",
        format!("PHP {} ({}, {ini})", env.version, php.display()),
    );
    let mut wanted: Vec<&str> = Vec::new();
    if servers.iter().any(|s| s.kind.is_mysql_family()) {
        wanted.push("mysqli");
    }
    if servers.iter().any(|s| !s.kind.is_mysql_family()) {
        wanted.push("pgsql");
    }
    wanted.extend(php_env::REQUIRED_EXTENSIONS);
    for ext in wanted {
        let name = format!("php extension {ext}");
        if env.has(ext) {
            c.ok(name, "loaded");
        } else {
            let pkg = php_env::debian_package(&env.version, ext);
            c.fail(name, "not loaded", format!("apt-get install {pkg}, then restart php-fpm (`phpenmod {ext}` if the package is installed)"));
        }
    }
    if env.max_input_vars >= php_env::MIN_MAX_INPUT_VARS {
        c.ok(
            "php max_input_vars",
            format!("{} in {ini}", env.max_input_vars),
        );
    } else {
        c.fail(
            "php max_input_vars",
            format!("{} in {ini}; Moodle needs at least {}", env.max_input_vars, php_env::MIN_MAX_INPUT_VARS),
            format!("set `max_input_vars = {}` in {ini} and in php-fpm's php.ini (e.g. /etc/php/{}/fpm/php.ini), then restart php-fpm", php_env::MIN_MAX_INPUT_VARS, env.version.split('.').take(2).collect::<Vec<_>>().join(".")),
        );
    }
    if env.rc4.ok() {
        c.ok(
            "php rc4 (MNET)",
            format!("RC4 seals with {}", env.rc4.openssl),
        );
    } else {
        c.fail(
            "php rc4 (MNET)",
            format!(
                "{}: RC4 {}{}; every MNET call fails",
                env.rc4.openssl,
                if env.rc4.listed {
                    "listed but sealing fails"
                } else {
                    "not available"
                },
                env.rc4
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            php_env::RC4_FIX,
        );
    }
}

/// The web server's user with its groups.
struct WebUser {
    name: String,
    uid: Uid,
    gids: Vec<Gid>,
}

fn web_user(home: &Home, c: &mut Checks) -> Option<WebUser> {
    let name = home.settings.web.user.clone();
    let user = match User::from_name(&name) {
        Ok(Some(u)) => u,
        _ => {
            c.fail("web user", format!("user `{name}` (setting web.user) does not exist on this machine"), "`vmoodle settings set web.user NAME` with the user php-fpm runs as (`ps -o user= -C php-fpm8.2`)");
            return None;
        }
    };
    let gids = CString::new(name.clone())
        .ok()
        .and_then(|n| nix::unistd::getgrouplist(&n, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    c.ok("web user", format!("{name} (uid {})", user.uid));
    Some(WebUser {
        name,
        uid: user.uid,
        gids,
    })
}

#[derive(Clone, Copy)]
enum Want {
    Read,
    WriteDir,
}

/// Whether `u` may read the file (or write into the directory) at `p`: every directory above
/// it must let `u` through. The error names the path that stops it and why.
fn may(u: &WebUser, p: &Path, want: Want) -> Result<(), (PathBuf, String)> {
    let bits = |m: &std::fs::Metadata, r: u32| -> bool {
        if u.uid.is_root() {
            return true;
        }
        let mode = m.mode();
        let shift = if m.uid() == u.uid.as_raw() {
            6
        } else if u.gids.iter().any(|g| g.as_raw() == m.gid()) {
            3
        } else {
            0
        };
        (mode >> shift) & r == r
    };
    let describe = |m: &std::fs::Metadata| {
        format!(
            "mode {:04o}, owner {}:{}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        )
    };
    let mut ancestors: Vec<&Path> = p.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let m = std::fs::metadata(dir).map_err(|e| (dir.to_path_buf(), e.to_string()))?;
        if !bits(&m, 0o1) {
            return Err((
                dir.to_path_buf(),
                format!(
                    "{} cannot enter {} ({})",
                    u.name,
                    dir.display(),
                    describe(&m)
                ),
            ));
        }
    }
    let m = std::fs::metadata(p).map_err(|e| (p.to_path_buf(), format!("{}: {e}", p.display())))?;
    let (need, what) = match want {
        Want::Read => (0o4, "read"),
        Want::WriteDir if !m.is_dir() => {
            return Err((
                p.to_path_buf(),
                format!("{} is not a directory", p.display()),
            ))
        }
        Want::WriteDir => (0o3, "write into"),
    };
    if bits(&m, need) {
        Ok(())
    } else {
        Err((
            p.to_path_buf(),
            format!(
                "{} cannot {what} {} ({})",
                u.name,
                p.display(),
                describe(&m)
            ),
        ))
    }
}

/// The config.php `master set` read (it records it in the master's description).
fn master_config(master: &Instance) -> Option<PathBuf> {
    master
        .description
        .strip_prefix("Master Moodle (")
        .and_then(|s| s.strip_suffix(')'))
        .map(PathBuf::from)
}

fn hook_checks(
    home: &Home,
    opts: &Options,
    instances: &[Instance],
    web: Option<&WebUser>,
    c: &mut Checks,
) {
    let hook_path = home.hook_path();
    let config = match (&opts.moodle_dir, instances.iter().find(|i| i.is_master)) {
        (Some(dir), _) => hook::locate_config(dir).map_err(|e| e.to_string()),
        (None, Some(m)) => master_config(m).ok_or_else(|| {
            "the master's config.php is not known; give --moodle-dir DIR".to_string()
        }),
        (None, None) => Err("no master is registered".to_string()),
    };
    match config {
        Err(why) => c.fail(
            "hook installed",
            why,
            "vmoodle master set --moodle-dir DIR && vmoodle hook install --moodle-dir DIR",
        ),
        Ok(config) => {
            let install = format!(
                "vmoodle hook install --moodle-dir {}",
                config.parent().unwrap_or(Path::new("/")).display()
            );
            match std::fs::read_to_string(&config) {
                Err(e) => c.fail(
                    "hook installed",
                    format!("cannot read {}: {e}", config.display()),
                    install,
                ),
                Ok(text) if text.contains(hook::snippet(&hook_path).trim_end()) => c.ok(
                    "hook installed",
                    format!("{} includes {}", config.display(), hook_path.display()),
                ),
                Ok(text) if text.contains(hook::BEGIN_MARK) => c.fail(
                    "hook installed",
                    format!(
                        "{} has a vmoodle hook, but not the one of this home ({})",
                        config.display(),
                        hook_path.display()
                    ),
                    install,
                ),
                Ok(_) => c.fail(
                    "hook installed",
                    format!("{} has no vmoodle hook", config.display()),
                    install,
                ),
            }
        }
    }
    let Some(u) = web else {
        c.skip("hook.php readable", "no web user to check for");
        return;
    };
    readable(c, u, "hook.php readable", &hook_path);
}

fn readable(c: &mut Checks, u: &WebUser, name: &str, p: &Path) {
    match may(u, p, Want::Read) {
        Ok(()) => c.ok(name, format!("{} can read {}", u.name, p.display())),
        Err((at, why)) if at == p => c.fail(
            name,
            why,
            "vmoodle hook publish   (rewrites hook.php and every host file, 0640, group web.group)",
        ),
        Err((at, why)) => c.fail(name, why, format!("chmod o+x {}", at.display())),
    }
}

fn file_checks(home: &Home, instances: &[Instance], web: Option<&WebUser>, c: &mut Checks) {
    let Some(u) = web else {
        c.skip("host files and dataroots", "no web user to check for");
        return;
    };
    for i in instances {
        if !i.is_master {
            let p = home.hosts_dir().join(hostfile::file_name(&i.host));
            readable(c, u, &format!("host file {}", i.host), &p);
        }
        let name = format!("dataroot {}", i.shortname);
        let dr = Path::new(&i.dataroot);
        let group = &home.settings.web.group;
        match may(u, dr, Want::WriteDir) {
            Ok(()) => c.ok(name, format!("{} can write into {}", u.name, dr.display())),
            Err((at, why)) if !at.exists() => c.fail(
                name,
                why,
                format!(
                    "install -d -o {} -g {group} -m 2770 {}",
                    u.name,
                    dr.display()
                ),
            ),
            Err((at, why)) if at == dr => c.fail(
                name,
                why,
                format!(
                    "chown -R {}:{group} {} && chmod 2770 {}",
                    u.name,
                    dr.display(),
                    dr.display()
                ),
            ),
            Err((at, why)) => c.fail(name, why, format!("chmod o+x {}", at.display())),
        }
    }
}
