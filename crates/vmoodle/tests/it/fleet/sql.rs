//! `vmoodle sql`: a read-only query on live sites, with each instance's own account; writes are
//! refused by the servers themselves.

use super::LiveFleet;

/// An instance's database, for the tests' own checks (as the server's administrator).
pub(crate) struct Db {
    pub(crate) pg: bool,
    pub(crate) name: String,
}

impl Db {
    pub(crate) fn of(f: &LiveFleet, token: &str) -> Self {
        let i = f.s.vm.json(&["instance", "show", token, "--json"]);
        Self {
            pg: i["dbtype"] == "pgsql",
            name: i["dbname"].as_str().unwrap().to_string(),
        }
    }
}

/// One value (or statement) in an instance's database, by the administrator.
pub(crate) fn db_value(db: &Db, sql: &str) -> String {
    if db.pg {
        crate::deploy::pg_value(&db.name, sql)
    } else {
        crate::deploy::my_value(&db.name, sql)
    }
}

fn sql_across_sites(server: &str) {
    let f = LiveFleet::new(server, 2);
    let (a, b) = (&f.tokens[0], &f.tokens[1]);
    let vm = &f.s.vm;
    let (da, dbb) = (Db::of(&f, a), Db::of(&f, b));
    let users = db_value(&da, "SELECT COUNT(*) FROM mdl_user");

    // Rows from both sites, the instance first, {table} expanded.
    let r = vm.json(&[
        "sql",
        "SELECT id, username, deleted, firstaccess FROM {user} ORDER BY id",
        a,
        b,
        "--json",
    ]);
    let sites = r["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2, "{r}");
    for s in sites {
        assert_eq!(s["status"], "ok", "{r}");
        assert_eq!(
            s["columns"],
            serde_json::json!(["id", "username", "deleted", "firstaccess"])
        );
        assert_eq!(
            s["rows"].as_array().unwrap().len().to_string(),
            users,
            "{r}"
        );
    }
    assert_eq!(sites[0]["rows"][0][0], "1", "{r}");
    assert_eq!(sites[0]["rows"][0][1], "guest", "{r}");
    let csv = vm.ok(&[
        "sql",
        "SELECT username FROM {user} WHERE id = 2",
        a,
        b,
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        vec![
            "instance,username",
            &format!("{a},admin"),
            &format!("{b},admin")
        ],
        "{csv}"
    );
    let table = vm.ok(&["sql", "SELECT username FROM {user} WHERE id = 2", a]);
    assert!(
        table.contains("instance") && table.contains("admin"),
        "{table}"
    );

    // Columns of any type come back as text: counts, sums, averages (NUMERIC/DECIMAL), floats,
    // NULL, dates, booleans.
    let r = vm.json(&[
        "sql",
        "SELECT COUNT(*) AS n, SUM(id) AS s, AVG(id) AS av, 1.5 AS f, NULL AS z, CAST('2026-11-23' AS DATE) AS d, (1 = 1) AS t FROM {user}",
        a,
        "--json",
    ]);
    let row = &r["sites"][0]["rows"][0];
    assert_eq!(row[0].as_str(), Some(users.as_str()), "{r}");
    let sum = db_value(&da, "SELECT SUM(id) FROM mdl_user");
    assert_eq!(row[1].as_str(), Some(sum.as_str()), "{r}");
    let av: f64 = row[2].as_str().unwrap().parse().unwrap();
    let want: f64 = sum.parse::<f64>().unwrap() / users.parse::<f64>().unwrap();
    assert!((av - want).abs() < 0.01, "{r}");
    assert_eq!(row[3], "1.5", "{r}");
    assert!(row[4].is_null(), "{r}");
    assert_eq!(row[5], "2026-11-23", "{r}");
    assert!(row[6] == "1" || row[6] == "t", "{r}");
    // Server types read from their binary form, as the servers' own clients print them.
    let (types, want): (&str, Vec<serde_json::Value>) = if server == "pg" {
        (
            "SELECT CAST('2026-11-23 06:40:05' AS TIMESTAMP) AS dt, CAST(-5 AS SMALLINT) AS i, \
             CAST(1.25 AS NUMERIC(10,3)) AS d, '\\x00ff'::bytea AS bin, 'é' AS utf, \
             CAST('{\"a\":1}' AS JSONB) AS j, CAST('f' AS BOOLEAN) AS b, \
             CAST(123456789012 AS NUMERIC) AS big, CAST(0.0001 AS NUMERIC) AS small, \
             CAST('2026-11-23' AS DATE) + 1 AS day, INTERVAL '1 day' AS iv",
            serde_json::json!([
                "2026-11-23 06:40:05",
                "-5",
                "1.250",
                "\\x00ff",
                "é",
                "{\"a\": 1}",
                "f",
                "123456789012",
                "0.0001",
                "2026-11-24",
                "(cannot show a INTERVAL value: cast it in the query, e.g. x::text)"
            ])
            .as_array()
            .unwrap()
            .clone(),
        )
    } else {
        (
            "SELECT CAST('2026-11-23 06:40:05' AS DATETIME) AS dt, CAST(-5 AS SIGNED) AS i, \
             CAST(1.25 AS DECIMAL(10,3)) AS d, X'00FF' AS bin, 'é' AS utf, \
             CAST('12:34:56' AS TIME) AS tm, CAST(18446744073709551615 AS UNSIGNED) AS u, \
             CAST('2026-11-23 06:40:05.5' AS DATETIME(6)) AS us",
            serde_json::json!([
                "2026-11-23 06:40:05",
                "-5",
                "1.250",
                "0x00ff",
                "é",
                "12:34:56",
                "18446744073709551615",
                "2026-11-23 06:40:05.500000"
            ])
            .as_array()
            .unwrap()
            .clone(),
        )
    };
    let r = vm.json(&["sql", types, a, "--json"]);
    assert_eq!(r["sites"][0]["rows"][0].as_array().unwrap(), &want, "{r}");
    // No rows: the columns are still named.
    let r = vm.json(&[
        "sql",
        "SELECT id, email FROM {user} WHERE id < 0",
        a,
        "--json",
    ]);
    assert_eq!(
        r["sites"][0]["columns"],
        serde_json::json!(["id", "email"]),
        "{r}"
    );
    // --max-rows keeps that many and says so.
    let r = vm.json(&[
        "sql",
        "SELECT name FROM {config}",
        a,
        "--max-rows",
        "3",
        "--json",
    ]);
    assert_eq!(r["sites"][0]["rows"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["sites"][0]["truncated"], true, "{r}");

    // Writes: refused by the server (its read-only error), nothing changed.
    let config_rows = db_value(&da, "SELECT COUNT(*) FROM mdl_config");
    for write in [
        "UPDATE {user} SET firstname = 'Pwned'",
        "DELETE FROM {user}",
        "INSERT INTO {config} (name, value) VALUES ('vmoodle_pwned', '1')",
        "CREATE TABLE {pwned} (id INT)",
    ] {
        let out = vm.run(&["sql", write, a, "--json"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{write}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let err = r["sites"][0]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(r["sites"][0]["status"], "failed", "{r}");
        let read_only = if server == "pg" {
            err.contains("read-only transaction")
        } else {
            err.contains("READ ONLY transaction")
        };
        assert!(read_only, "{write}: {err}");
    }
    // Two statements: the server refuses the prepare; the DELETE never runs.
    let out = vm.run(&["sql", "SELECT 1; DELETE FROM {user}", a, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sites"][0]["status"], "failed", "{r}");
    assert_eq!(db_value(&da, "SELECT COUNT(*) FROM mdl_user"), users);
    assert_eq!(
        db_value(
            &da,
            "SELECT COUNT(*) FROM mdl_user WHERE firstname = 'Pwned'"
        ),
        "0"
    );
    assert_eq!(
        db_value(&da, "SELECT COUNT(*) FROM mdl_config"),
        config_rows
    );
    let pwned = if server == "pg" {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'mdl_pwned'"
    } else {
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'mdl_pwned'"
    };
    assert_eq!(db_value(&da, pwned), "0");

    // One site fails (a table only the other has); the other answers; exit 3.
    db_value(
        &dbb,
        "CREATE TABLE mdl_only_here (x INT); INSERT INTO mdl_only_here VALUES (42)",
    );
    if server == "pg" {
        let user = f.s.vm.json(&["instance", "show", b, "--json"])["dbuser"]
            .as_str()
            .unwrap()
            .to_string();
        db_value(
            &dbb,
            &format!("GRANT SELECT ON mdl_only_here TO \"{user}\""),
        );
    }
    let out = vm.run(&["sql", "SELECT x FROM {only_here}", a, b, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sites"][0]["status"], "failed", "{r}");
    assert!(
        r["sites"][0]["error"]
            .as_str()
            .unwrap()
            .contains("only_here"),
        "{r}"
    );
    assert_eq!(r["sites"][1]["status"], "ok", "{r}");
    assert_eq!(r["sites"][1]["rows"][0][0], "42", "{r}");

    // The server's time limit stops a slow statement.
    let sleep = if server == "pg" {
        "SELECT pg_sleep(20)"
    } else {
        "SELECT SLEEP(20) FROM {user} LIMIT 1"
    };
    let out = vm.run(&["sql", sleep, a, "--timeout", "1s", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{r}");
    assert_eq!(r["sites"][0]["status"], "timeout", "{r}");

    if server != "pg" {
        // A statement that lifts the server's limit itself is cancelled on the server by vmoodle.
        let out = vm.run(&[
            "sql",
            "SET STATEMENT max_statement_time = 0 FOR SELECT COUNT(*) AS vmoodle_lifted FROM {config} a, {config} b, {config} c, {config} d",
            a,
            "--timeout",
            "1s",
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["sites"][0]["status"], "timeout", "{r}");
        let err = r["sites"][0]["error"].as_str().unwrap();
        assert!(err.contains("cancelled on the server"), "{err}");
        let running = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                       WHERE INFO LIKE '%vmoodle_lifted%' AND INFO NOT LIKE '%PROCESSLIST%'";
        let mut left = db_value(&da, running);
        for _ in 0..20 {
            if left == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            left = db_value(&da, running);
        }
        if left != "0" {
            // Not left running for the rest of the tests' servers either.
            let ids = crate::deploy::my_value(
                "mysql",
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE '%vmoodle_lifted%' AND INFO NOT LIKE '%PROCESSLIST%'",
            );
            for id in ids.lines() {
                crate::deploy::my_value("mysql", &format!("KILL QUERY {id}"));
            }
        }
        assert_eq!(left, "0", "the statement still runs on the server");
    }

    // Bad input.
    let e = vm.fails(&["sql", "  ", a], 1);
    assert!(e.contains("the query is empty"), "{e}");
    let e = vm.fails(&["sql", "SELECT 1", "nosuch"], 1);
    assert!(e.contains("`nosuch`"), "{e}");
}

#[test]
fn sql_on_mariadb() {
    sql_across_sites("maria");
}

#[test]
fn sql_on_postgresql() {
    sql_across_sites("pg");
}
