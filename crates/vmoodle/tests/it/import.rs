//! Importing VMoodle's register table (MariaDB and PostgreSQL) and node list.

use crate::common::{Backend, Vm};
use vmoodle_test::{mariadb_sql, pg_sql, MariaDb, PgDb};

const ROWS: &str = "\
('http://one.vm.example.org','mariadb','localhost','vm_one','pw1','vm_one','mdl_',0,'/srv/vmdata/one',1,1,'One','one','first'),\
('https://two.vm.example.org','mysqli','127.0.0.1','vm_two','pw''2','vm_two','mdl_',1,'/srv/vmdata/two/',0,0,'Two','two',''),\
('http://three.vm.example.org','postgres','127.0.0.1','vm_three','pw3','vm_three','mdl_',0,'/srv/vmdata/three',-1,1,'Three','three',NULL),\
('not a url','mariadb','localhost','x','x','x','mdl_',0,'/srv/vmdata/x',0,1,'Bad','bad',''),\
('http://far.vm.example.org','mariadb','db9.example.org','vm_far','x','vm_far','mdl_',0,'/srv/vmdata/far',0,1,'Far','far',''),\
('http://evil.vm.example.org','mariadb','localhost','vm_evil','x','vm_evil','mdl_',0,'/srv/vmdata/../../etc',0,1,'Evil','evil','')";

const COLUMNS: &str = "(vhostname, vdbtype, vdbhost, vdblogin, vdbpass, vdbname, vdbprefix, vdbpersist, vdatapath, mnet, enabled, name, shortname, description)";

fn check_report(vm: &Vm, out: std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(3),
        "some rows are refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let taken: Vec<&str> = r["taken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["shortname"].as_str().unwrap())
        .collect();
    assert_eq!(taken, ["one", "two", "three"]);
    let refused = r["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 3, "{r}");
    let reasons: String = refused
        .iter()
        .map(|x| x["reason"].as_str().unwrap().to_string() + "\n")
        .collect();
    assert!(reasons.contains("not a url"), "{reasons}");
    assert!(reasons.contains("db9.example.org"), "{reasons}");
    assert!(reasons.contains("/srv/vmdata/../../etc"), "{reasons}");
    let two = vm.json(&["instance", "show", "two", "--json"]);
    assert_eq!(two["enabled"], false);
    assert_eq!(two["dbpersist"], true);
    assert_eq!(two["dataroot"], "/srv/vmdata/two");
    assert_eq!(two["wwwroot"], "https://two.vm.example.org");
    assert_eq!(
        vm.json(&["instance", "show", "three", "--json"])["dbserver"],
        "pg"
    );
    assert_eq!(vm.json(&["instance", "show", "one", "--json"])["mnet"], 1);
    let hf = std::fs::read_to_string(vm.hosts_dir().join("two.vm.example.org.php")).unwrap();
    assert!(hf.contains("'enabled' => false"));
    // Importing again refuses every row as already registered and changes nothing.
}

#[test]
fn import_vmoodle_table_mariadb() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let db = MariaDb::create("vmreg");
    mariadb_sql(
        Some(&db.name),
        &format!(
            "CREATE TABLE mdl_local_vmoodle (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255), shortname VARCHAR(80), description TEXT, vhostname VARCHAR(255), vdbtype VARCHAR(16) NOT NULL DEFAULT 'mysqli', vdbhost VARCHAR(80) NOT NULL DEFAULT 'localhost', vdblogin VARCHAR(16) NOT NULL DEFAULT 'root', vdbpass VARCHAR(32), vdbname VARCHAR(64), vdbprefix VARCHAR(10) NOT NULL DEFAULT 'mdl_', vdbpersist TINYINT DEFAULT 0, vdatapath VARCHAR(255), mnet MEDIUMINT DEFAULT 0, enabled TINYINT DEFAULT 1, timecreated BIGINT DEFAULT 0); INSERT INTO mdl_local_vmoodle {COLUMNS} VALUES {ROWS};"
        ),
    );
    let out = vm.run(&[
        "import",
        "vmoodle",
        "--dbserver",
        "maria",
        "--database",
        &db.name,
        "--json",
    ]);
    check_report(&vm, out);
    let out = vm.run(&[
        "import",
        "vmoodle",
        "--dbserver",
        "maria",
        "--database",
        &db.name,
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["taken"].as_array().unwrap().is_empty());
    assert!(r["refused"].to_string().contains("already registered"));
    let err = vm.fails(
        &[
            "import",
            "vmoodle",
            "--dbserver",
            "maria",
            "--database",
            &db.name,
            "--prefix",
            "xx_",
        ],
        1,
    );
    assert!(
        err.contains("xx_block_vmoodle") || err.contains("xx_local_vmoodle"),
        "{err}"
    );
}

#[test]
fn import_vmoodle_table_postgres() {
    let vm = Vm::new(Backend::Postgres);
    vm.add_local_servers();
    let db = PgDb::create("vmregpg");
    pg_sql(
        &db.name,
        &format!(
            "CREATE TABLE mdl_local_vmoodle (id BIGSERIAL PRIMARY KEY, name VARCHAR(255), shortname VARCHAR(80), description TEXT, vhostname VARCHAR(255), vdbtype VARCHAR(16) NOT NULL DEFAULT 'mysqli', vdbhost VARCHAR(80) NOT NULL DEFAULT 'localhost', vdblogin VARCHAR(16) NOT NULL DEFAULT 'root', vdbpass VARCHAR(32), vdbname VARCHAR(64), vdbprefix VARCHAR(10) NOT NULL DEFAULT 'mdl_', vdbpersist SMALLINT DEFAULT 0, vdatapath VARCHAR(255), mnet INTEGER DEFAULT 0, enabled SMALLINT DEFAULT 1, timecreated BIGINT DEFAULT 0); INSERT INTO mdl_local_vmoodle {COLUMNS} VALUES {ROWS};"
        ),
    );
    let out = vm.run(&[
        "import",
        "vmoodle",
        "--dbserver",
        "pg",
        "--database",
        &db.name,
        "--json",
    ]);
    check_report(&vm, out);
}

#[test]
fn import_csv_nodelist() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let csv = vm.dir.path().join("nodelist.csv");
    std::fs::write(
        &csv,
        "# VMoodle node list\n\
         // comments are skipped\n\
         vhostname;name;shortname;description;vdbtype;vdbhost;vdblogin;vdbpass;vdbname;vdbprefix;vdatapath;mnet;config_theme;auth_cas|server\n\
         http://n1.example.org;Node 1;n1;A&#44 B;mariadb;localhost;vm_n1;p1;vm_n1;mdl_;/srv/nodes/n1;NEW;boost;cas.example.org\n\
         http://n2.example.org;Node 2;n2;;postgres;127.0.0.1;vm_n2;p2;vm_n2;mdl_;/srv/nodes/n2;NEW;;\n\
         http://n3.example.org;Node 3;n 3;;mariadb;localhost;vm_n3;p3;vm_n3;mdl_;/srv/nodes/n3;0;;\n\
         http://n4.example.org;Node 4;n4;;oracle;localhost;vm_n4;p4;vm_n4;mdl_;/srv/nodes/n4;0;;\n",
    )
    .unwrap();
    let out = vm.run(&["import", "csv", csv.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["taken"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["refused"].as_array().unwrap().len(), 2, "{r}");
    assert!(
        r["refused"].to_string().contains("n 3") && r["refused"].to_string().contains("oracle"),
        "{r}"
    );
    assert!(r["notes"].to_string().contains("config_theme"), "{r}");
    let n1 = vm.json(&["instance", "show", "n1", "--json"]);
    assert_eq!(n1["description"], "A; B");
    let (m1, m2) = (
        n1["mnet"].as_i64().unwrap(),
        vm.json(&["instance", "show", "n2", "--json"])["mnet"]
            .as_i64()
            .unwrap(),
    );
    assert!(
        m1 >= 1 && m2 == m1 + 1,
        "NEW gives each row a new subnetwork: {m1} {m2}"
    );
    std::fs::write(&csv, "vhostname;name\nhttp://x.example.org;X\n").unwrap();
    let err = vm.fails(&["import", "csv", csv.to_str().unwrap()], 1);
    assert!(
        err.contains("lacks the column(s)") && err.contains("vdbpass"),
        "{err}"
    );
}
