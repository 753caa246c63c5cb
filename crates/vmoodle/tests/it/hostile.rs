//! Hostile tenants at the database layer: grants that reach only their own database, logins
//! created without a clear password in any statement.

use vmoodle_core::{DbKind, Secret};
use vmoodle_dbserver::{admin, connect, ConnSpec};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn admin_spec(kind: DbKind) -> ConnSpec {
    let my = kind.is_mysql_family();
    ConnSpec {
        server: if my { "maria" } else { "pg" }.into(),
        kind,
        host: "127.0.0.1".into(),
        port: if my { 3306 } else { 5432 },
        socket: None,
        user: if my {
            vmoodle_test::mariadb_user()
        } else {
            vmoodle_test::pg_user()
        },
        password: Secret::new(if my {
            vmoodle_test::mariadb_password()
        } else {
            vmoodle_test::pg_password()
        }),
    }
}

/// A user made for `<base>_1` logs in with its password and reaches that database only: not
/// `<base>11`, which an unescaped `_` in the GRANT would also cover.
#[test]
fn mariadb_grant_is_exact_and_hash_logs_in() {
    let base = vmoodle_test::unique_name("g");
    let (mine, other) = (format!("{base}_1"), format!("{base}11"));
    let spec = admin_spec(DbKind::Mariadb);
    let pw = Secret::random_password();
    let user = format!("{base}u");
    rt().block_on(async {
        let r = async {
            admin::create_database(&spec, &mine).await?;
            admin::create_database(&spec, &other).await?;
            admin::create_user(&spec, &user, &pw, &mine).await?;
            let as_user = ConnSpec {
                user: user.clone(),
                password: pw.clone(),
                ..spec.clone()
            };
            let c = connect(&as_user, Some(&mine)).await?;
            vmoodle_dbserver::close(c).await;
            let denied = connect(&as_user, Some(&other)).await;
            anyhow::ensure!(denied.is_err(), "the user of `{mine}` could open `{other}`");
            anyhow::Ok(())
        }
        .await;
        let _ = admin::drop_user(&spec, &user).await;
        let _ = admin::drop_database(&spec, &mine).await;
        let _ = admin::drop_database(&spec, &other).await;
        r.unwrap();
    });
}

/// A PostgreSQL role is created from a SCRAM verifier computed by vmoodle, and that verifier is
/// the one PostgreSQL itself makes from the clear password (the local server trusts 127.0.0.1,
/// so a login alone would prove nothing): a control role given the clear password by the test
/// stores a verifier that vmoodle's function reproduces from the same salt.
#[test]
fn pg_role_from_scram_verifier_matches_postgres() {
    let db = vmoodle_test::unique_name("s");
    let (user, control) = (format!("{db}u"), format!("{db}c"));
    let spec = admin_spec(DbKind::Pgsql);
    let pw = Secret::random_password();
    rt().block_on(async {
        let r = async {
            admin::create_database(&spec, &db).await?;
            admin::create_user(&spec, &user, &pw, &db).await?;
            let mut c = connect(&spec, None).await?;
            c.exec("SET password_encryption = 'scram-sha-256'", &[]).await?;
            c.exec(
                &format!(
                    "CREATE ROLE \"{control}\" LOGIN PASSWORD {}",
                    vmoodle_dbserver::quote_literal(DbKind::Pgsql, pw.expose())
                ),
                &[],
            )
            .await?;
            let stored = c
                .rows(
                    "SELECT rolname::text, rolpassword::text FROM pg_authid WHERE rolname IN (?, ?) ORDER BY rolname",
                    &[control.as_str().into(), user.as_str().into()],
                )
                .await?;
            vmoodle_dbserver::close(c).await;
            anyhow::ensure!(stored.len() == 2, "{stored:?}");
            let verifier = |i: usize| stored[i][1].clone().unwrap_or_default();
            let (theirs, ours) = (verifier(0), verifier(1));
            anyhow::ensure!(ours.starts_with("SCRAM-SHA-256$4096:"), "{ours}");
            let salt_b64 = theirs
                .split_once(':')
                .and_then(|(_, r)| r.split_once('$'))
                .map(|(s, _)| s)
                .unwrap_or_default();
            let salt = openssl::base64::decode_block(salt_b64)?;
            let recomputed = vmoodle_dbserver::scram_sha256_verifier(&pw, &salt, 4096)
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(recomputed == theirs, "ours {recomputed} != PostgreSQL's {theirs}");
            // And vmoodle's own role logs in (over the protocol, SCRAM if the server asks).
            let as_user = ConnSpec {
                user: user.clone(),
                password: pw.clone(),
                ..spec.clone()
            };
            let c = connect(&as_user, Some(&db)).await?;
            vmoodle_dbserver::close(c).await;
            anyhow::Ok(())
        }
        .await;
        let _ = admin::drop_database(&spec, &db).await;
        let _ = admin::drop_user(&spec, &user).await;
        let _ = admin::drop_user(&spec, &control).await;
        r.unwrap();
    });
}
