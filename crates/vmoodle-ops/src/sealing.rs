//! The one-time upgrade of stored secrets to values bound to their place (table, column, row;
//! see `vmoodle_core::secret`). Homes made before bindings hold `v1:` values that any row could
//! hold: they open while the home has not been upgraded, and the first command that opens the
//! home for a change re-seals every one of them bound, then marks the home. From then on an
//! unbound value is refused, so a sealed administrator password copied into an instance's row
//! is never published into a host file.

use anyhow::{Context, Result};
use std::path::Path;
use vmoodle_core::{Binding, SecretBox};
use vmoodle_registry::InstanceFields;
use vmoodle_site::files;

use crate::Home;

/// The file whose presence says that every stored secret of the home is bound.
pub const MARKER: &str = "secrets.bound";

pub fn upgraded(root: &Path) -> bool {
    root.join(MARKER).exists()
}

pub fn mark_upgraded(root: &Path) -> Result<()> {
    files::write_atomic(
        &root.join(MARKER),
        b"every stored secret of this home is bound to its table, column and row (v2)\n",
        0o600,
        None,
    )?;
    Ok(())
}

/// Re-seals every unbound value of the home (servers' administrator passwords, instances'
/// database passwords, `schema.db_password`) bound to where it is, then marks the home; a no-op
/// once marked. Call with the home's lock held.
pub async fn upgrade(home: &mut Home) -> Result<()> {
    if upgraded(&home.root) {
        home.secrets.accept_unbound(false);
        return Ok(());
    }
    home.secrets.accept_unbound(true);
    let mut n = 0;
    for s in home.registry.dbservers().await? {
        if SecretBox::is_unbound(&s.admin_password_sealed) {
            let at = Binding::dbserver_admin(&s.name);
            let p = home
                .secrets
                .open(&s.admin_password_sealed, &at)
                .with_context(|| {
                    format!("the administrator password of database server `{}`", s.name)
                })?;
            home.registry
                .set_dbserver_admin_password(s.id, &home.secrets.seal(&p, &at)?)
                .await?;
            n += 1;
        }
    }
    for i in home.registry.instances().await? {
        if SecretBox::is_unbound(&i.dbpass_sealed) {
            let at = Binding::instance_dbpass(&i.shortname);
            let p = home
                .secrets
                .open(&i.dbpass_sealed, &at)
                .with_context(|| format!("the database password of instance `{}`", i.shortname))?;
            let mut f = InstanceFields::from(&i);
            f.dbpass_sealed = home.secrets.seal(&p, &at)?;
            home.registry.update_instance(i.id, &f).await?;
            n += 1;
        }
    }
    let key = "schema.db_password";
    if SecretBox::is_unbound(&home.settings.schema.db_password) {
        let at = Binding::setting(key);
        let p = home
            .secrets
            .open(&home.settings.schema.db_password, &at)
            .with_context(|| format!("the setting `{key}`"))?;
        let sealed = home.secrets.seal(&p, &at)?;
        let text = vmoodle_core::settings::set_in_document(&home.settings_text()?, key, &sealed)?;
        home.save_settings(&text)?;
        n += 1;
    }
    mark_upgraded(&home.root)?;
    home.secrets.accept_unbound(false);
    if n > 0 {
        tracing::info!("re-sealed {n} stored secret(s) bound to their place (one-time upgrade)");
    }
    Ok(())
}
