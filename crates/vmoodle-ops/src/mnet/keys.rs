//! MNET key pairs: reading, rotating and making sure a site has one, in Moodle's own format.

use super::*;

#[derive(Debug, Serialize)]
pub struct KeysReport {
    pub instance: String,
    pub wwwroot: String,
    pub mnet_mode: String,
    pub dispatcher: Option<String>,
    pub current: Option<CertInfo>,
    pub private_key_matches: bool,
    pub local_row_current: bool,
    pub history: Vec<HistoryItem>,
}

#[derive(Debug, Serialize)]
pub struct HistoryItem {
    pub expires: i64,
    pub fingerprint_sha256: String,
}

pub async fn keys(home: &Home, key: &str) -> Result<KeysReport> {
    let s = site_by_key(home, key).await?;
    let mut c = s.conn().await?;
    let r = async {
        let kp = s.keypair(&mut c).await?;
        let local = s.local_id(&mut c).await?;
        let row = c
            .column(
                &format!(
                    "SELECT {} FROM {} WHERE id = ?",
                    s.cast("public_key"),
                    s.t("mnet_host")
                ),
                &[local.into()],
            )
            .await?;
        let history = s
            .config(&mut c, Some("mnet"), "openssl_history")
            .await?
            .and_then(|h| mnet::parse_history(&h))
            .unwrap_or_default();
        anyhow::Ok(KeysReport {
            instance: s.inst.shortname.clone(),
            wwwroot: s.inst.wwwroot.clone(),
            mnet_mode: vmoodle_core::MnetMode(s.inst.mnet).describe(),
            dispatcher: s.config(&mut c, None, "mnet_dispatcher_mode").await?,
            current: kp
                .as_ref()
                .and_then(|k| mnet::cert_info(&k.certificate).ok()),
            private_key_matches: kp.as_ref().is_some_and(mnet::key_matches),
            local_row_current: kp
                .as_ref()
                .is_some_and(|k| row.first().is_some_and(|r| r == &k.certificate)),
            history: history
                .iter()
                .map(|h| HistoryItem {
                    expires: h.expires,
                    fingerprint_sha256: mnet::cert_info(&h.certificate)
                        .map(|i| i.fingerprint_sha256)
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }
    .await;
    vmoodle_dbserver::close(c).await;
    r
}

/// Gives a site a fresh key pair, the previous one moved into the history as Moodle does, and
/// turns MNET on. Returns the new pair and its expiry.
pub(super) async fn rotate(home: &Home, s: &Site, c: &mut Conn) -> Result<(Keypair, i64)> {
    let local = s.local_id(c).await?;
    let old = s.keypair(c).await?;
    let old_expires: i64 = c
        .column(
            &format!(
                "SELECT {} FROM {} WHERE id = ?",
                s.cast("public_key_expires"),
                s.t("mnet_host")
            ),
            &[local.into()],
        )
        .await?
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let host = s
        .inst
        .host
        .split(':')
        .next()
        .unwrap_or(&s.inst.host)
        .to_string();
    let kp = mnet::generate(
        &s.inst.wwwroot,
        &s.inst.name,
        &format!("noreply@{host}"),
        home.settings.mnet.key_lifetime_days,
    )?;
    let expires = mnet::cert_info(&kp.certificate)?.not_after;
    let mut history = s
        .config(c, Some("mnet"), "openssl_history")
        .await?
        .and_then(|h| mnet::parse_history(&h))
        .unwrap_or_default();
    let generations = match s
        .config(c, Some("mnet"), "openssl_generations")
        .await?
        .and_then(|g| g.parse::<usize>().ok())
    {
        Some(g) if g > 0 => g,
        _ => {
            set_setting(
                c,
                s.kind,
                &s.inst.prefix,
                Some("mnet"),
                "openssl_generations",
                &mnet::DEFAULT_GENERATIONS.to_string(),
            )
            .await?;
            mnet::DEFAULT_GENERATIONS
        }
    };
    if let Some(o) = old {
        history.insert(
            0,
            HistoryEntry {
                certificate: o.certificate,
                private_key: o.private_key,
                expires: old_expires,
            },
        );
    }
    history.truncate(generations);
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        Some("mnet"),
        "openssl_history",
        &mnet::serialize_history(&history),
    )
    .await?;
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        Some("mnet"),
        "openssl",
        &mnet::to_config(&kp),
    )
    .await?;
    c.exec(
        &format!(
            "UPDATE {} SET public_key = ?, public_key_expires = ?, wwwroot = ? WHERE id = ?",
            s.t("mnet_host")
        ),
        &[
            kp.certificate.as_str().into(),
            expires.into(),
            s.inst.wwwroot.as_str().into(),
            local.into(),
        ],
    )
    .await?;
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        None,
        "mnet_dispatcher_mode",
        "strict",
    )
    .await?;
    Ok((kp, expires))
}

/// What `mnet init` did.
#[derive(Debug, Serialize)]
pub struct InitReport {
    pub certificate: CertInfo,
    pub repair: RepairReport,
    pub caches: CacheReport,
}

/// `vmoodle mnet init X`: a fresh key pair (and MNET on); its peers learn the new key, and the
/// site's Moodle caches are invalidated.
pub async fn init(home: &Home, key: &str) -> Result<InitReport> {
    let s = site_by_key(home, key).await?;
    let mut c = s.conn().await?;
    let r = rotate(home, &s, &mut c).await;
    vmoodle_dbserver::close(c).await;
    let (kp, _) = r?;
    let repair = repair_for(home, Some(s.inst.id)).await?;
    let caches = caches::invalidate_config(home, std::slice::from_ref(&s.inst)).await;
    Ok(InitReport {
        certificate: mnet::cert_info(&kp.certificate)?,
        repair,
        caches,
    })
}

/// A peer's view of another site: its current certificate and expiry.
pub(super) struct Current {
    pub(super) certificate: String,
    pub(super) expires: i64,
}

pub(super) async fn current(s: &Site, c: &mut Conn) -> Result<Option<Current>> {
    Ok(match s.keypair(c).await? {
        Some(k) => {
            let expires = mnet::cert_info(&k.certificate)?.not_after;
            Some(Current {
                certificate: k.certificate,
                expires,
            })
        }
        None => None,
    })
}

/// Makes sure a site has a key (making one if it has none); returns its current key and
/// whether it was just made.
pub(super) async fn ensure_key(home: &Home, s: &Site, c: &mut Conn) -> Result<(Current, bool)> {
    if let Some(cur) = current(s, c).await? {
        return Ok((cur, false));
    }
    let (kp, expires) = rotate(home, s, c).await?;
    Ok((
        Current {
            certificate: kp.certificate,
            expires,
        },
        true,
    ))
}
