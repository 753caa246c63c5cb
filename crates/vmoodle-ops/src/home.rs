//! The home: one directory holding vmoodle.toml, the register (registry.sqlite unless the
//! settings name a PostgreSQL URL), the secret key, the hook and its host files, templates,
//! archives and logs. `init` creates it and is harmless to run twice; `open` refuses a directory
//! that is not a home, with the command that makes one.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use vmoodle_core::settings::{self, Settings};
use vmoodle_core::SecretBox;
use vmoodle_registry::Registry;
use vmoodle_site::files;

pub const SETTINGS_FILE: &str = "vmoodle.toml";
pub const REGISTRY_FILE: &str = "registry.sqlite";
pub const KEY_FILE: &str = "secret.key";
pub const HOOK_FILE: &str = "hook.php";
pub const HOSTS_DIR: &str = "hosts";
/// The PostgreSQL register's password, sealed with the secret key (0600); never in the URL.
pub const REGISTRY_PASSWORD_FILE: &str = "registry.pw";
const LOCK_FILE: &str = ".lock";

/// An open home.
#[derive(Debug)]
pub struct Home {
    pub root: PathBuf,
    pub settings: Settings,
    pub secrets: SecretBox,
    pub registry: Registry,
    /// Jobs found interrupted and recovered when the lock was taken.
    pub recovered: Vec<crate::jobs::Recovered>,
    /// Who starts the jobs run on this home and where they go (the daemon sets it per request).
    pub job_ctx: std::sync::Mutex<JobContext>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// Who starts the jobs of an open home, the bulk run they belong to, and a queued job the next
/// journal takes over (so a job page exists before the home's lock is taken).
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// `cli:USER` (the default), `web:ADMIN`, `api:TOKEN`, `scheduler`.
    pub actor: String,
    pub parent: Option<i64>,
    pub adopt: Option<i64>,
}

impl Home {
    /// Sets who starts the jobs of this home and the bulk run they belong to.
    pub fn set_job_context(&self, ctx: JobContext) {
        *self.job_ctx.lock().unwrap_or_else(|p| p.into_inner()) = ctx;
    }
    pub fn job_context(&self) -> JobContext {
        self.job_ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// The queued job the next journal takes over, once.
    pub fn take_adopt(&self) -> Option<i64> {
        self.job_ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .adopt
            .take()
    }
}

/// `cli:USER` for the user running this process.
pub fn cli_actor() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    format!("cli:{name}")
}

/// How long `open_locked` waits for another vmoodle to release the home (seconds).
static LOCK_WAIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(120);

/// Sets how long commands wait for the home's lock (the CLI's `--lock-wait`).
pub fn set_lock_wait(secs: u64) {
    LOCK_WAIT.store(secs, std::sync::atomic::Ordering::Relaxed);
}

/// The home's lock could not be taken in time.
#[derive(Debug, thiserror::Error)]
#[error("another vmoodle is changing the home {home} ({holder}); gave up after waiting {waited} s\nhint: wait for it to finish, or wait longer with --lock-wait SECONDS (or VMOODLE_LOCK_WAIT); `vmoodle jobs list --state running` shows what runs")]
pub struct LockTimeout {
    pub home: String,
    pub holder: String,
    pub waited: u64,
}

/// What `init` found and made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub home: PathBuf,
    pub created: Vec<String>,
    pub kept: Vec<String>,
    pub registry: String,
}

impl Home {
    pub fn settings_path(root: &Path) -> PathBuf {
        root.join(SETTINGS_FILE)
    }
    pub fn hosts_dir(&self) -> PathBuf {
        self.root.join(HOSTS_DIR)
    }
    pub fn hook_path(&self) -> PathBuf {
        self.root.join(HOOK_FILE)
    }

    /// Creates the home (or completes a partial one); existing files are kept as they are.
    pub async fn init(
        root: &Path,
        registry: Option<&str>,
        registry_password: Option<&vmoodle_core::Secret>,
    ) -> Result<InitReport> {
        let root = absolute(root)?;
        let mut created = Vec::new();
        let mut kept = Vec::new();
        if !root.exists() {
            fs_err::create_dir_all(&root)?;
            created.push(root.display().to_string());
        }
        // The web server must traverse the home to reach hook.php and hosts/; nothing else in it
        // is readable by others.
        fs_err::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        for d in ["templates", "archives", "logs"] {
            let p = root.join(d);
            if p.exists() {
                kept.push(format!("{d}/"));
            } else {
                fs_err::create_dir(&p)?;
                fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
                created.push(format!("{d}/"));
            }
        }
        let key = root.join(KEY_FILE);
        if key.exists() {
            check_key_mode(&key)?;
            kept.push(KEY_FILE.into());
        } else {
            files::write_atomic(
                &key,
                format!("{}\n", SecretBox::generate_key_hex()).as_bytes(),
                0o600,
                None,
            )?;
            created.push(KEY_FILE.into());
            // A new key has sealed nothing yet: nothing to upgrade.
            crate::sealing::mark_upgraded(&root)?;
        }
        let sp = Self::settings_path(&root);
        if sp.exists() {
            kept.push(SETTINGS_FILE.into());
        } else {
            let mut text = settings::default_toml();
            if let Some(url) = registry {
                text = settings::set_in_document(&text, "registry", url)?;
            }
            files::write_atomic(&sp, text.as_bytes(), 0o600, None)?;
            created.push(SETTINGS_FILE.into());
        }
        if let Some(pw) = registry_password {
            let url = registry.unwrap_or_default();
            if vmoodle_core::settings::url_with_password(url, "").is_none() {
                bail!("a register password needs a postgres:// register URL that names its user, e.g. postgres://vmoodle@db.example.org/vmoodle");
            }
            let key = SecretBox::from_hex(&fs_err::read_to_string(root.join(KEY_FILE))?)?;
            let sealed = key.seal(pw, &registry_password_binding())?;
            files::write_atomic(
                &root.join(REGISTRY_PASSWORD_FILE),
                format!("{sealed}\n").as_bytes(),
                0o600,
                None,
            )?;
            created.push(REGISTRY_PASSWORD_FILE.into());
        }
        if let (Some(url), true) = (registry, kept.iter().any(|k| k == SETTINGS_FILE)) {
            let text = fs_err::read_to_string(&sp)?;
            let current = Settings::parse(&text)?;
            if current.registry != url {
                bail!(
                    "{} already uses the register `{}`; vmoodle will not switch it to another one silently\nhint: edit `registry` in {} if you really mean to",
                    root.display(),
                    vmoodle_registry::redact_url(&current.registry),
                    sp.display()
                );
            }
        }
        // From here on init changes what other commands use (the register, hosts/): it waits
        // for a running deploy or delete like any other change.
        let home = Self::open_locked(&root).await?;
        let registry = match home.registry.backend() {
            vmoodle_registry::Backend::Sqlite => root.join(REGISTRY_FILE).display().to_string(),
            vmoodle_registry::Backend::Postgres => {
                vmoodle_registry::redact_url(&home.settings.registry)
            }
        };
        if home.registry.backend() == vmoodle_registry::Backend::Sqlite {
            fs_err::set_permissions(
                root.join(REGISTRY_FILE),
                std::fs::Permissions::from_mode(0o600),
            )?;
        }
        let hosts_existed = home.hosts_dir().exists();
        crate::publish::publish_all(&home).await?;
        if hosts_existed {
            kept.push(format!("{HOSTS_DIR}/"));
        } else {
            created.push(format!("{HOSTS_DIR}/"));
        }
        home.registry.close().await;
        Ok(InitReport {
            home: root,
            created,
            kept,
            registry,
        })
    }

    /// Opens an existing home.
    pub async fn open(root: &Path) -> Result<Self> {
        let root = absolute(root)?;
        let sp = Self::settings_path(&root);
        if !sp.is_file() {
            bail!(
                "{} is not a vmoodle home (it has no {SETTINGS_FILE})\nhint: create it with `vmoodle init --home {}`",
                root.display(),
                root.display()
            );
        }
        let text = fs_err::read_to_string(&sp)?;
        let settings = Settings::parse(&text).with_context(|| format!("in {}", sp.display()))?;
        let key = root.join(KEY_FILE);
        check_key_mode(&key)?;
        let mut secrets = SecretBox::from_hex(&fs_err::read_to_string(&key)?)
            .with_context(|| format!("in {}", key.display()))?;
        secrets.accept_unbound(!crate::sealing::upgraded(&root));
        let registry = if settings.registry == "sqlite" {
            Registry::open_sqlite(&root.join(REGISTRY_FILE)).await?
        } else {
            Registry::open_postgres(&registry_url(&root, &settings.registry, &secrets)?).await?
        };
        Ok(Self {
            root,
            settings,
            secrets,
            registry,
            recovered: Vec::new(),
            job_ctx: std::sync::Mutex::new(JobContext {
                actor: cli_actor(),
                ..Default::default()
            }),
            _lock: None,
        })
    }

    /// Opens a home for a change: takes its lock (waits while another vmoodle changes it).
    pub async fn open_locked(root: &Path) -> Result<Self> {
        let root = absolute(root)?;
        if !Self::settings_path(&root).is_file() {
            // Not a home: let `open` explain.
            return Self::open(&root).await;
        }
        let lock = take_lock(&root).await?;
        let mut home = Self::open(&root).await?;
        home._lock = Some(lock);
        crate::sealing::upgrade(&mut home).await?;
        // A job whose process died (kill -9, a crash, a reboot) is undone, or finished where it
        // had passed its point of no return, before anything else changes.
        home.recovered = crate::jobs::recover(&home, false).await?;
        Ok(home)
    }

    /// Writes new settings text after validating it, and takes it into use.
    pub fn save_settings(&mut self, text: &str) -> Result<()> {
        let s = Settings::parse(text)?;
        files::write_atomic(
            &Self::settings_path(&self.root),
            text.as_bytes(),
            0o600,
            None,
        )?;
        self.settings = s;
        Ok(())
    }

    pub fn settings_text(&self) -> Result<String> {
        Ok(fs_err::read_to_string(Self::settings_path(&self.root))?)
    }

    /// The path of a tool: the setting when set, else the first of its names on PATH.
    pub fn executable(&self, key: &str) -> Result<PathBuf, vmoodle_exec::ExecError> {
        let set = self.settings.executable(key);
        let names = settings::EXECUTABLES
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, n)| *n)
            .unwrap_or(&[]);
        if !set.is_empty() {
            let p = PathBuf::from(set);
            return if vmoodle_exec::is_executable(&p) {
                Ok(p)
            } else {
                Err(vmoodle_exec::ExecError::NotFound {
                    tool: set.into(),
                    setting: key.into(),
                    searched: String::new(),
                })
            };
        }
        vmoodle_exec::find_on_path(names).ok_or_else(|| vmoodle_exec::ExecError::NotFound {
            tool: names.first().copied().unwrap_or(key).into(),
            setting: key.into(),
            searched: names.join(", "),
        })
    }

    /// The web server group, looked up on this machine.
    pub fn web_gid(&self) -> Result<nix::unistd::Gid> {
        Ok(files::group_id(&self.settings.web.group)?)
    }
}

/// Takes the home's lock, waiting up to the lock wait for another vmoodle to release it. The
/// lock file then names the holder (pid and command), for the message of whoever waits next.
async fn take_lock(root: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Seek, Write};
    let path = root.join(LOCK_FILE);
    let wait = LOCK_WAIT.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut told = false;
    loop {
        use std::os::unix::fs::OpenOptionsExt;
        // 0600: the lock file names the holder's command line.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let me = format!(
                    "pid {} (`{}`) since {}\n",
                    std::process::id(),
                    std::env::args().collect::<Vec<_>>().join(" "),
                    vmoodle_core::now_unix()
                );
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = lock.write_all(me.as_bytes());
                return Ok(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "holder unknown".into());
                if std::time::Instant::now() >= deadline {
                    return Err(LockTimeout {
                        home: root.display().to_string(),
                        holder,
                        waited: wait,
                    }
                    .into());
                }
                if !told {
                    tracing::warn!("waiting for the home's lock, held by {holder}");
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

fn check_key_mode(key: &Path) -> Result<()> {
    let meta = fs_err::metadata(key)
        .context("the home has no secret key\nhint: `vmoodle init` makes one")?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:03o}); it must be 0600\nhint: chmod 600 {}",
            key.display(),
            key.display()
        );
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.as_os_str().is_empty() {
        bail!("the home directory is empty\nhint: give --home DIR or set VMOODLE_HOME");
    }
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn registry_password_binding() -> vmoodle_core::Binding<'static> {
    vmoodle_core::Binding::setting("registry.password")
}

/// The register URL to connect with: the settings' URL, with the password from
/// `registry.pw` put in when there is one (a URL that already holds one is used as it is).
fn registry_url(root: &Path, url: &str, secrets: &SecretBox) -> Result<String> {
    let pw_file = root.join(REGISTRY_PASSWORD_FILE);
    if vmoodle_core::settings::url_has_password(url) || !pw_file.exists() {
        return Ok(url.to_string());
    }
    check_key_mode(&pw_file)?;
    let pw = secrets
        .open(
            fs_err::read_to_string(&pw_file)?.trim(),
            &registry_password_binding(),
        )
        .with_context(|| format!("in {}", pw_file.display()))?;
    vmoodle_core::settings::url_with_password(url, pw.expose()).ok_or_else(|| {
        anyhow::anyhow!(
            "the register URL `{}` names no user for the password in {}",
            vmoodle_core::settings::redact_url(url),
            pw_file.display()
        )
    })
}
