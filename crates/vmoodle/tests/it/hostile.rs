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

/// `instance add` args for an instance on `server` whose database account is `user`.
fn add_args(short: &str, server: &str, user: &str) -> Vec<String> {
    [
        "instance",
        "add",
        "--wwwroot",
        &format!("http://{short}.example.org"),
        "--shortname",
        short,
        "--dbserver",
        server,
        "--dbname",
        &format!("vm_{short}"),
        "--dbuser",
        user,
        "--dataroot",
        &format!("/srv/moodledata/{short}"),
        "--password-stdin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// An instance whose database account is the server's administrator, or holds server-wide
/// powers, is refused by `instance add`, `instance edit`, `master set` and `import csv` unless
/// `--force-admin-account` is given; the error says why.
#[test]
fn privileged_database_accounts_are_refused() {
    use crate::common::{fake_moodle, Backend, Vm};
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let my_admin = vmoodle_test::mariadb_user();
    let pg_admin = vmoodle_test::pg_user();
    // The registered administrator, on both servers.
    for (server, user) in [("maria", my_admin.as_str()), ("pg", pg_admin.as_str())] {
        let err = vm.fails_stdin(&strs(&add_args("a", server, user)), "pw", 1);
        assert!(
            err.contains(&format!(
                "database account `{user}` must not be an instance's"
            )) && err.contains("administrator account")
                && err.contains("host file")
                && err.contains("--force-admin-account"),
            "{err}"
        );
    }
    assert!(vm
        .json(&["instance", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    // Another account with server-wide powers: a MariaDB user with a global privilege and
    // GRANT OPTION, a PostgreSQL role with CREATEDB.
    let mu = vmoodle_test::unique_name("pm");
    vmoodle_test::mariadb_sql(
        None,
        &format!("CREATE USER '{mu}'@'%' IDENTIFIED BY 'x'; GRANT PROCESS ON *.* TO '{mu}'@'%' WITH GRANT OPTION;"),
    );
    let pu = vmoodle_test::unique_name("pp");
    vmoodle_test::pg_sql("postgres", &format!("CREATE ROLE \"{pu}\" LOGIN CREATEDB"));
    // A role with no attributes of its own that can run programs on the server.
    let pm = vmoodle_test::unique_name("pm");
    vmoodle_test::pg_sql(
        "postgres",
        &format!("CREATE ROLE \"{pm}\" LOGIN; GRANT pg_execute_server_program TO \"{pm}\""),
    );
    let r = std::panic::catch_unwind(|| {
        let err = vm.fails_stdin(&strs(&add_args("b", "maria", &mu)), "pw", 1);
        assert!(
            err.contains("server-wide powers")
                && err.contains("PROCESS")
                && err.contains("GRANT OPTION"),
            "{err}"
        );
        let err = vm.fails_stdin(&strs(&add_args("c", "pg", &pu)), "pw", 1);
        assert!(err.contains("CREATEDB"), "{err}");
        let err = vm.fails_stdin(&strs(&add_args("cm", "pg", &pm)), "pw", 1);
        assert!(err.contains("member of pg_execute_server_program"), "{err}");
        // An ordinary account is taken; editing it to the administrator is refused.
        vm.ok_stdin(&strs(&add_args("d", "maria", "vm_d")), "pw");
        let err = vm.fails(&["instance", "edit", "d", "--dbuser", &my_admin], 1);
        assert!(err.contains("administrator account"), "{err}");
        // Forced, with the reason accepted.
        let mut forced = add_args("e", "pg", &pg_admin);
        forced.push("--force-admin-account".into());
        vm.ok_stdin(&strs(&forced), "pw");
        // A node list row naming the administrator is refused, the others taken.
        let csv = vm.dir.path().join("nodes.csv");
        std::fs::write(
            &csv,
            format!(
                "vhostname;name;shortname;vdbtype;vdbhost;vdblogin;vdbpass;vdbname;vdatapath\n\
                 http://n1.example.org;N1;n1;mariadb;127.0.0.1;vm_n1;p;vm_n1;/srv/n1\n\
                 http://n2.example.org;N2;n2;mariadb;127.0.0.1;{my_admin};p;vm_n2;/srv/n2\n"
            ),
        )
        .unwrap();
        let out = vm.run(&["import", "csv", csv.to_str().unwrap(), "--json"]);
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["taken"].as_array().unwrap().len(), 1, "{rep}");
        assert!(
            rep["refused"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("administrator account"),
            "{rep}"
        );
        // The master's config.php naming the administrator account.
        let moodle = fake_moodle(
            vm.dir.path(),
            true,
            &[
                ("dbtype", "mariadb"),
                ("dbhost", "127.0.0.1"),
                ("dbname", "vm_master"),
                ("dbuser", &my_admin),
                ("dbpass", "whatever"),
                ("prefix", "mdl_"),
                ("wwwroot", "http://master.moodle.test"),
                ("dataroot", "/srv/moodledata/master"),
            ],
        );
        let err = vm.fails(
            &["master", "set", "--moodle-dir", moodle.to_str().unwrap()],
            1,
        );
        assert!(
            err.contains("administrator account") && err.contains("config.php"),
            "{err}"
        );
    });
    vmoodle_test::mariadb_sql(None, &format!("DROP USER IF EXISTS '{mu}'@'%'"));
    vmoodle_test::pg_sql("postgres", &format!("DROP ROLE IF EXISTS \"{pu}\""));
    vmoodle_test::pg_sql("postgres", &format!("DROP ROLE IF EXISTS \"{pm}\""));
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// The least MariaDB privileges the README documents for the administrator account are enough:
/// `dbserver check` says it can deploy, it creates a database and a user granted on it, and it
/// sees other accounts' powers (so `instance add` can refuse a privileged one).
#[test]
fn mariadb_least_privileged_admin_account_works() {
    let admin_name = vmoodle_test::unique_name("la");
    let pw = Secret::random_password();
    // The statements of the README's "Least privileges" section.
    vmoodle_test::mariadb_sql(
        None,
        &format!(
            "CREATE USER '{admin_name}'@'%' IDENTIFIED BY '{pw}';
             GRANT CREATE USER ON *.* TO '{admin_name}'@'%';
             GRANT SELECT ON mysql.* TO '{admin_name}'@'%';
             GRANT ALL PRIVILEGES ON `vm%`.* TO '{admin_name}'@'%' WITH GRANT OPTION;",
            pw = pw.expose()
        ),
    );
    let spec = ConnSpec {
        user: admin_name.clone(),
        password: pw.clone(),
        ..admin_spec(DbKind::Mariadb)
    };
    let db = vmoodle_test::unique_name("ld");
    let user = format!("{db}u");
    rt().block_on(async {
        let r = async {
            let report = vmoodle_dbserver::check(&spec).await?;
            anyhow::ensure!(report.can_deploy() && !report.superuser, "{report:?}");
            admin::create_database(&spec, &db).await?;
            admin::create_user(&spec, &user, &Secret::random_password(), &db).await?;
            anyhow::ensure!(admin::account_powers(&spec, &user).await?.is_empty());
            let root_powers = admin::account_powers(&spec, &vmoodle_test::mariadb_user()).await?;
            anyhow::ensure!(
                root_powers.iter().any(|p| p == "GRANT OPTION"),
                "{root_powers:?}"
            );
            anyhow::Ok(())
        }
        .await;
        let _ = admin::drop_user(&spec, &user).await;
        let _ = admin::drop_database(&spec, &db).await;
        r
    })
    .unwrap_or_else(|e| {
        vmoodle_test::mariadb_sql(None, &format!("DROP USER IF EXISTS '{admin_name}'@'%'"));
        panic!("{e:#}")
    });
    vmoodle_test::mariadb_sql(None, &format!("DROP USER IF EXISTS '{admin_name}'@'%'"));
}

fn sqlite(reg: &std::path::Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(reg)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `v1:` value (the format before bindings) sealed with the home's key.
fn seal_v1(home: &std::path::Path, plain: &str) -> String {
    use openssl::symm::{encrypt_aead, Cipher};
    let hex = std::fs::read_to_string(home.join("secret.key")).unwrap();
    let key: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce).unwrap();
    let mut tag = [0u8; 16];
    let ct = encrypt_aead(
        Cipher::aes_256_gcm(),
        &key,
        Some(&nonce),
        b"vmoodle-secret-v1",
        plain.as_bytes(),
        &mut tag,
    )
    .unwrap();
    format!(
        "v1:{}",
        openssl::base64::encode_block(&[&nonce[..], &ct, &tag].concat())
    )
}

/// A sealed administrator password copied into an instance's row does not open there: `hook
/// publish` refuses it and no host file gets it. Values of the old unbound format still work
/// once (re-sealed bound by the first command that opens the home for a change), then are
/// refused.
#[test]
fn sealed_values_are_bound_to_their_row() {
    use crate::common::{Backend, Vm};
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    vm.ok_stdin(&strs(&add_args("a", "maria", "vm_a")), "a-pw");
    vm.ok_stdin(&strs(&add_args("b", "pg", "vm_b")), "b-pw");
    let reg = vm.home.join("registry.sqlite");
    let hf = |host: &str| {
        std::fs::read_to_string(vm.hosts_dir().join(format!("{host}.example.org.php"))).unwrap()
    };
    assert!(hf("a").contains("'dbpass' => 'a-pw'"));
    // The copy.
    sqlite(
        &reg,
        "UPDATE instances SET dbpass = (SELECT admin_password FROM db_servers WHERE name = 'maria') WHERE shortname = 'a'",
    );
    // Another instance's value does not open either.
    sqlite(
        &reg,
        "UPDATE instances SET dbpass = (SELECT dbpass FROM instances WHERE shortname = 'a') WHERE shortname = 'b'",
    );
    let before = hf("a");
    let err = vm.fails(&["hook", "publish"], 1);
    assert!(
        err.contains("the database password of instance `a`")
            && err.contains("cannot be decrypted"),
        "{err}"
    );
    let admin_pw = vmoodle_test::mariadb_password();
    assert!(!admin_pw.is_empty());
    for host in ["a", "b"] {
        assert!(
            !hf(host).contains(&admin_pw),
            "the admin password reached a host file"
        );
    }
    assert_eq!(hf("a"), before);
    // Set right again.
    vm.ok_stdin(&["instance", "edit", "a", "--password-stdin"], "a-pw2");
    vm.ok_stdin(&["instance", "edit", "b", "--password-stdin"], "b-pw");
    vm.ok(&["hook", "publish"]);
    assert!(hf("a").contains("'dbpass' => 'a-pw2'"));
    // A renamed instance keeps its password (re-sealed for its new shortname).
    vm.ok(&["instance", "edit", "b", "--shortname", "bb"]);
    vm.ok(&["hook", "publish"]);
    assert!(hf("b").contains("'dbpass' => 'b-pw'"));

    // The one-time upgrade: a home from before bindings (no marker, v1 values).
    let v1 = seal_v1(&vm.home, "old-pw");
    sqlite(
        &reg,
        &format!("UPDATE instances SET dbpass = '{v1}' WHERE shortname = 'a'"),
    );
    std::fs::remove_file(vm.home.join("secrets.bound")).unwrap();
    // Read-only commands still read it...
    vm.ok(&["instance", "show", "a"]);
    // ...and the first change re-seals it bound.
    vm.ok(&["hook", "publish"]);
    assert!(hf("a").contains("'dbpass' => 'old-pw'"));
    let stored = sqlite(&reg, "SELECT dbpass FROM instances WHERE shortname = 'a'");
    assert!(stored.starts_with("v2:"), "{stored}");
    assert!(sqlite(&reg, "SELECT admin_password FROM db_servers")
        .lines()
        .all(|l| l.starts_with("v2:")));
    assert!(vm.home.join("secrets.bound").exists());
    // From then on an unbound value is refused.
    sqlite(
        &reg,
        &format!("UPDATE instances SET dbpass = '{v1}' WHERE shortname = 'a'"),
    );
    let err = vm.fails(&["hook", "publish"], 1);
    assert!(err.contains("unbound format"), "{err}");
}

/// A PostgreSQL register's password never goes on argv, into vmoodle.toml or onto the screen:
/// `init` refuses a URL that holds one (with a hint), takes it from stdin and keeps it sealed in
/// a 0600 file, and `settings show|get` redact a URL written with its password by hand.
#[test]
fn register_password_stays_off_argv_and_screens() {
    use crate::common::{Backend, Vm};
    use std::os::unix::fs::PermissionsExt;
    let pw = vmoodle_test::pg_password();
    assert!(
        !pw.is_empty(),
        "the test needs VMOODLE_TEST_PG_PASSWORD_FILE"
    );
    let reg = vmoodle_test::PgDb::create("regpw");
    // On argv: refused, nothing made, the password not echoed.
    let dir = vmoodle_test::TempDir::new("regpw");
    let home = dir.path().join("home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["init", "--registry", &reg.url()])
        .env("VMOODLE_HOME", &home)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("holds a password") && err.contains("--registry-password-stdin"),
        "{err}"
    );
    assert!(!err.contains(&pw), "{err}");
    assert!(!home.join("vmoodle.toml").exists());
    // From stdin (what Vm::new does for a PostgreSQL register).
    let vm = Vm::new(Backend::Postgres);
    vm.add_local_servers();
    let toml = std::fs::read_to_string(vm.home.join("vmoodle.toml")).unwrap();
    assert!(
        toml.contains("registry = \"postgres://") && !toml.contains(&pw),
        "{toml}"
    );
    let sealed = vm.home.join("registry.pw");
    let meta = std::fs::metadata(&sealed).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&sealed).unwrap().contains(&pw));
    assert_eq!(
        vm.json(&["dbserver", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A URL written into vmoodle.toml with its password (as homes before this did) still
    // works, and is never printed.
    let with_pw = toml.replacen(
        &format!("postgres://{}@", vmoodle_test::pg_user()),
        &format!("postgres://{}:{pw}@", vmoodle_test::pg_user()),
        1,
    );
    assert_ne!(with_pw, toml);
    std::fs::write(vm.home.join("vmoodle.toml"), with_pw).unwrap();
    let shown = vm.ok(&["settings", "show"])
        + &vm.ok(&["settings", "show", "--json"])
        + &vm.ok(&["settings", "get", "registry"]);
    assert!(!shown.contains(&pw), "{shown}");
    assert!(shown.contains(":****@"), "{shown}");
    let err = vm.fails(&["settings", "set", "registry", &reg.url()], 1);
    assert!(
        !err.contains(&pw) && err.contains("holds a password"),
        "{err}"
    );
}
