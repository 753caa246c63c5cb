//! The Clusters section of the web admin: the list of clusters and nodes (from the register
//! only), and a cluster's page with its topology and what its nodes' agents say, which still
//! renders (degraded, with each node's error) when no agent answers.

use super::*;
use crate::common::Backend;
use vmoodle_core::{Binding, DbKind, Secret};
use vmoodle_registry::{NewCluster, NewClusterNode, NewDbServer};

/// Ports on 127.0.0.1 where nothing listens (bound, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Registers, straight in the register (as `vmoodle cluster create` leaves it), database server
/// `server` turned into cluster `cluster`: `nodes` are (name, role) on 127.0.0.1, each with its
/// own agent port where nothing listens, a real self-signed certificate and a sealed token.
fn register_cluster(vm: &Vm, server: &str, cluster: &str, nodes: &[(&str, &str)]) {
    register_cluster_on(vm, server, cluster, nodes, &free_ports(nodes.len()));
}

/// As `register_cluster`, with the nodes' agent ports given.
fn register_cluster_on(
    vm: &Vm,
    server: &str,
    cluster: &str,
    nodes: &[(&str, &str)],
    ports: &[u16],
) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let home = vmoodle_ops::Home::open(&vm.home).await.unwrap();
        let reg = &home.registry;
        let s = reg
            .add_dbserver(&NewDbServer {
                name: server.into(),
                kind: DbKind::Mariadb,
                host: "10.0.0.11".into(),
                port: 3306,
                socket: None,
                admin_user: "root".into(),
                admin_password_sealed: home
                    .secrets
                    .seal(
                        &Secret::new("not-used-here"),
                        &Binding::dbserver_admin(server),
                    )
                    .unwrap(),
            })
            .await
            .unwrap();
        let c = reg
            .add_cluster(&NewCluster {
                name: cluster.into(),
                dbserver_id: s.id,
                vip: "10.0.0.100/24".into(),
                interface: "eth0".into(),
                writer_port: 3306,
                reader_port: 3307,
                max_lag: 10,
                orig_host: "10.0.0.11".into(),
                orig_port: 3306,
                orig_socket: None,
                repl_user: "vmoodle_repl".into(),
                repl_password_sealed: home
                    .secrets
                    .seal(
                        &Secret::new("not-used-either"),
                        &Binding::cluster_repl(cluster),
                    )
                    .unwrap(),
            })
            .await
            .unwrap();
        for ((name, role), port) in nodes.iter().zip(ports) {
            let (cert, _key) =
                vmoodle_agent::identity::self_signed(name, &["127.0.0.1".to_string()]).unwrap();
            let n = reg
                .add_cluster_node(&NewClusterNode {
                    name: (*name).into(),
                    address: "127.0.0.1".into(),
                    agent_port: *port,
                    token_sealed: home
                        .secrets
                        .seal(&Secret::new("agent-token"), &Binding::node_token(name))
                        .unwrap(),
                    fingerprint: vmoodle_agent::identity::fingerprint_pem(&cert).unwrap(),
                    cert_pem: String::from_utf8(cert).unwrap(),
                })
                .await
                .unwrap();
            reg.add_cluster_member(c.id, n.id, role, None, None)
                .await
                .unwrap();
        }
        reg.set_dbserver_endpoint(
            s.id,
            "10.0.0.100",
            3306,
            None,
            Some(("10.0.0.100", 3307)),
            "cluster",
        )
        .await
        .unwrap();
        reg.set_cluster_state(c.id, "active").await.unwrap();
    });
}

/// Registers a node that serves no cluster.
fn register_free_node(vm: &Vm, name: &str) {
    let port = free_ports(1)[0];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let home = vmoodle_ops::Home::open(&vm.home).await.unwrap();
        let (cert, _key) =
            vmoodle_agent::identity::self_signed(name, &["127.0.0.1".to_string()]).unwrap();
        home.registry
            .add_cluster_node(&NewClusterNode {
                name: name.into(),
                address: "127.0.0.1".into(),
                agent_port: port,
                token_sealed: home
                    .secrets
                    .seal(&Secret::new("agent-token"), &Binding::node_token(name))
                    .unwrap(),
                fingerprint: vmoodle_agent::identity::fingerprint_pem(&cert).unwrap(),
                cert_pem: String::from_utf8(cert).unwrap(),
            })
            .await
            .unwrap();
    });
}

/// The text of the table with `id` in a page.
fn table<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page
        .find(&format!("<table class=\"responsive\" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table #{id} in:\n{page}"));
    let rest = &page[at..];
    &rest[..rest.find("</table>").unwrap()]
}

/// Percent-encodes a path segment (enough for the names used here).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn clusters_page_empty_state_and_unknown_cluster_404() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);

    let (status, page) = b.get("/clusters");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<a href=\"/clusters\" aria-current=\"page\">Clusters</a>"),
        "the nav marks the section: {page}"
    );
    let clusters = table(&page, "clusters");
    assert!(clusters.contains("id=\"no-clusters\""), "{clusters}");
    assert!(
        clusters.contains("<code>vmoodle node add</code>"),
        "{clusters}"
    );
    assert!(
        clusters.contains("<code>vmoodle cluster create</code>"),
        "{clusters}"
    );
    let nodes = table(&page, "nodes");
    assert!(
        nodes.contains("No cluster nodes are registered yet"),
        "{nodes}"
    );
    assert!(nodes.contains("<code>vmoodle node add</code>"), "{nodes}");

    // The nav link sits after "Database servers" on every page.
    let (_, other) = b.get("/dbservers");
    let db = other.find(">Database servers</a>").unwrap();
    let cl = other.find(">Clusters</a>").unwrap();
    assert!(db < cl, "Clusters comes after Database servers");

    let (status, page) = b.get("/clusters/nosuch");
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("No such cluster"), "{page}");
    assert!(page.contains("nosuch"), "{page}");
}

#[test]
fn clusters_registered_cluster_is_listed_and_its_page_says_degraded_when_agents_do_not_answer() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    register_cluster(
        &vm,
        "maria1",
        "c1",
        &[("db1", "primary"), ("db2", "replica"), ("lb1", "proxy")],
    );
    register_free_node(&vm, "spare1");
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);

    // The list: from the register only.
    let started = std::time::Instant::now();
    let (status, page) = b.get("/clusters");
    assert_eq!(status, 200, "{page}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the list asks no agent"
    );
    let clusters = table(&page, "clusters");
    assert!(!clusters.contains("no-clusters"), "{clusters}");
    assert!(
        clusters.contains("<a href=\"/clusters/c1\">c1</a>"),
        "{clusters}"
    );
    assert!(clusters.contains("<td data-label=\"Database server\">maria1</td>"));
    assert!(clusters.contains("<span class=\"badge ok\">active</span>"));
    assert!(clusters.contains("10.0.0.100/24"), "{clusters}");
    assert!(clusters.contains(">3306</td>") && clusters.contains(">3307</td>"));
    assert!(
        clusters.contains("db1 (primary), db2 (replica), lb1 (proxy)"),
        "{clusters}"
    );
    let nodes = table(&page, "nodes");
    for n in ["db1", "db2", "lb1", "spare1"] {
        assert!(
            nodes.contains(&format!("<td data-label=\"Name\">{n}</td>")),
            "{n}: {nodes}"
        );
    }
    let row = |name: &str| {
        let at = nodes
            .find(&format!("<td data-label=\"Name\">{name}</td>"))
            .unwrap();
        let rest = &nodes[at..];
        rest[..rest.find("</tr>").unwrap()].to_string()
    };
    let db1 = row("db1");
    assert!(db1.contains("<td data-label=\"Address\" class=\"mono\">127.0.0.1</td>"));
    assert!(
        db1.contains("<td data-label=\"Role\">primary</td>"),
        "{db1}"
    );
    assert!(db1.contains("<a href=\"/clusters/c1\">c1</a>"), "{db1}");
    assert!(row("lb1").contains("<td data-label=\"Role\">proxy</td>"));
    let spare = row("spare1");
    assert!(
        spare.contains("<td data-label=\"Serves\">free</td>"),
        "{spare}"
    );

    // Its page: topology from the register, status from the agents, which do not answer.
    let started = std::time::Instant::now();
    let (status, page) = b.get("/clusters/c1");
    assert_eq!(status, 200, "{page}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the status is time-bound"
    );
    assert!(page.contains("<h1>Cluster c1</h1>"), "{page}");
    assert!(page.contains("<a href=\"/dbservers\">maria1</a> (mariadb)"));
    assert!(page.contains("<dd class=\"mono\" id=\"writer\">10.0.0.100:3306</dd>"));
    assert!(page.contains("<dd class=\"mono\" id=\"reader\">10.0.0.100:3307</dd>"));
    assert!(page.contains("<dd class=\"mono\" id=\"original\">10.0.0.11:3306</dd>"));
    assert!(
        page.contains("10.0.0.100:3306, reads 10.0.0.100:3307"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"badge bad\" id=\"health\">degraded</span>"),
        "{page}"
    );
    assert!(!page.contains(">healthy</span>"), "{page}");
    let problems = &page[page.find("<ul id=\"problems\">").expect("a problems list")..];
    let problems = &problems[..problems.find("</ul>").unwrap()];
    for n in ["db1", "db2", "lb1"] {
        assert!(
            problems.contains(&format!("<li>{n}: ")),
            "{n} is a problem: {problems}"
        );
    }
    assert!(
        problems.contains("no proxy node holds the virtual IP 10.0.0.100/24"),
        "{problems}"
    );
    let dbs = table(&page, "databases");
    for (n, role) in [("db1", "primary"), ("db2", "replica")] {
        let at = dbs
            .find(&format!("<td data-label=\"Node\">{n}</td>"))
            .unwrap_or_else(|| panic!("no row of {n}: {dbs}"));
        let r = &dbs[at..];
        let r = &r[..r.find("</tr>").unwrap()];
        assert!(
            r.contains(&format!("<td data-label=\"Registered as\">{role}</td>")),
            "{r}"
        );
        assert!(
            r.contains("<span class=\"badge bad\">no answer</span>"),
            "{r}"
        );
        assert!(
            r.contains(&format!(
                "reaching the agent of node `{n}` at https://127.0.0.1:"
            )),
            "{r}"
        );
    }
    let proxies = table(&page, "proxies");
    assert!(
        proxies.contains("<td data-label=\"Node\">lb1</td>"),
        "{proxies}"
    );
    assert!(
        proxies.contains("<span class=\"badge bad\">no answer</span>"),
        "{proxies}"
    );
    assert!(
        proxies.contains("reaching the agent of node `lb1`"),
        "{proxies}"
    );
    // No sealed secret shows.
    assert!(!page.contains("agent-token") && !page.contains("not-used"));
}

/// Agents that take the connection but never answer (a listener that never accepts): the page
/// still comes back within its time bound, with the topology and the reason it has no status.
#[test]
fn clusters_page_with_hung_agents_is_time_bound() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let hung: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = hung
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    register_cluster_on(
        &vm,
        "maria1",
        "c1",
        &[("db1", "primary"), ("db2", "replica"), ("lb1", "proxy")],
        &ports,
    );
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let started = std::time::Instant::now();
    let (status, page) = b.get("/clusters/c1");
    let took = started.elapsed();
    assert_eq!(status, 200, "{page}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    assert!(page.contains("<dd class=\"mono\" id=\"writer\">10.0.0.100:3306</dd>"));
    // Every node is asked at once and each gives up on its own: the page names each one.
    assert!(page.contains("id=\"health\">degraded</span>"), "{page}");
    for node in ["db1", "db2", "lb1"] {
        assert!(
            page.contains(&format!("{node}: its agent did not answer within 5 s")),
            "{node}: {page}"
        );
    }
    drop(hung);
}

/// Names are letters, digits and `_ . -` when made through the CLI; one put straight in the
/// register with HTML in it is still shown as text.
#[test]
fn clusters_pages_escape_names() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let evil = "c<script>x&\"'";
    register_cluster(&vm, "maria<b>", evil, &[("n<i>1", "primary")]);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let (status, list) = b.get("/clusters");
    assert_eq!(status, 200, "{list}");
    let (status, page) = b.get(&format!("/clusters/{}", segment(evil)));
    assert_eq!(status, 200, "{page}");
    assert!(
        list.contains("<a href=\"/clusters/c&#60;script&#62;x&#38;&#34;&#39;\">"),
        "{list}"
    );
    assert!(page.contains("<h1>Cluster c&#60;script&#62;x&#38;&#34;&#39;</h1>"));
    for p in [&list, &page] {
        for raw in ["<script>", "maria<b>", "n<i>1"] {
            assert!(!p.contains(raw), "`{raw}` unescaped in:\n{p}");
        }
        // askama's escapes: < > & " ' as &#60; &#62; &#38; &#34; &#39;
        for escaped in [
            "c&#60;script&#62;x&#38;&#34;&#39;",
            "maria&#60;b&#62;",
            "n&#60;i&#62;1",
        ] {
            assert!(p.contains(escaped), "no `{escaped}` in:\n{p}");
        }
    }
}

/// The cluster page's lag section comes from what the daemon's watcher sampled, never from the
/// agents: a daemon without its background loops has no sample, and says so for each replica
/// (the live status above still shows the nodes that do not answer).
#[test]
fn clusters_page_lag_section_says_no_samples_yet() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    register_cluster(
        &vm,
        "maria1",
        "c1",
        &[
            ("db1", "primary"),
            ("db2", "replica"),
            ("db3", "replica"),
            ("lb1", "proxy"),
        ],
    );
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let (status, page) = b.get("/clusters/c1");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<h2 id=\"lag-h\">Lag over the last hour</h2>"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"badge bad\" id=\"health\">degraded</span>"),
        "the live status is still there: {page}"
    );
    let lag = table(&page, "lag-history");
    for n in ["db2", "db3"] {
        let at = lag
            .find(&format!("<td data-label=\"Node\">{n}</td>"))
            .unwrap_or_else(|| panic!("no row of {n}: {lag}"));
        let r = &lag[at..];
        let r = &r[..r.find("</tr>").unwrap()];
        assert!(r.contains("no samples yet"), "{r}");
    }
    // Only replicas: the primary and the proxy have no lag.
    assert!(!lag.contains(">db1<") && !lag.contains(">lb1<"), "{lag}");
    assert!(!lag.contains("<svg"), "{lag}");
    // A cluster registered by hand has no events (jobs) yet.
    let events = table(&page, "cluster-events");
    assert!(
        events.contains("Nothing was done to this cluster through vmoodle yet."),
        "{events}"
    );
}

/// With its background loops, the daemon's cluster watcher takes every cluster's status at
/// once and `/metrics` shows it: agents that do not answer make their nodes down and the
/// cluster degraded; the page then says when the last sample was taken, still with no lag.
#[test]
fn clusters_watcher_feeds_the_metrics() {
    let vm = Vm::new(Backend::Sqlite);
    let (_write, read) = admin_and_tokens(&vm);
    register_cluster(
        &vm,
        "maria1",
        "c1",
        &[("db1", "primary"), ("db2", "replica"), ("lb1", "proxy")],
    );
    let d = Daemon::start(&vm);
    let c = d.client();
    let want = [
        "vmoodle_cluster_node_up{cluster=\"c1\",node=\"db1\"} 0",
        "vmoodle_cluster_node_up{cluster=\"c1\",node=\"db2\"} 0",
        "vmoodle_cluster_primary{cluster=\"c1\",node=\"db1\"} 0",
        "vmoodle_cluster_vip_holder{cluster=\"c1\",node=\"lb1\"} 0",
        "vmoodle_cluster_degraded{cluster=\"c1\"} 1",
        "vmoodle_cluster_status_timestamp_seconds{cluster=\"c1\"} ",
    ];
    let started = std::time::Instant::now();
    let text = loop {
        let text = c
            .get(format!("{}/metrics", d.url))
            .bearer_auth(&read)
            .send()
            .unwrap()
            .text()
            .unwrap();
        if want.iter().all(|w| text.contains(w)) {
            break text;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the watcher did not sample c1: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        !text.contains("vmoodle_cluster_replica_lag_seconds{"),
        "{text}"
    );
    assert!(!text.contains("vmoodle_haproxy_backend_up{"), "{text}");

    let b = d.login("alice", PASSWORD);
    let (status, page) = b.get("/clusters/c1");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("; last sample "), "{page}");
    let lag = table(&page, "lag-history");
    assert!(lag.contains("no samples yet"), "{lag}");
}
