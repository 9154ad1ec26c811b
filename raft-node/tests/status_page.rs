//! The status page in a real browser: headless Chromium (the distribution's package) driven
//! through chromedriver over WebDriver, against a cluster of three `raft-node` processes.
//! The page is read as a user sees it: the rows and attributes its script rendered.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`.ci/run` installs them). Without them
//! the test fails under `CI=true` and is skipped, saying why, elsewhere.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, runtime, Cluster};
use fantoccini::{Client as Browser, ClientBuilder};
use serde_json::{json, Value};

/// How long chromedriver may take to listen, and the browser to start a session.
const DRIVER_START_TIMEOUT_MS: u64 = 20_000;
/// How long the page may take to show a change in the cluster (it polls once a second).
const PAGE_CHANGE_TIMEOUT_MS: u64 = 5_000;
/// How long a restarted node may take to catch up, as the page shows it.
const CATCH_UP_TIMEOUT_MS: u64 = 20_000;

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// chromedriver on a loopback port, killed on drop (also when an assertion fails).
struct Driver {
    child: Child,
    addr: SocketAddr,
    chromium: PathBuf,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver, or says why not: `None` to skip outside CI.
    fn start() -> Option<Driver> {
        let found = (on_path("chromium"), on_path("chromedriver"));
        let (Some(chromium), Some(chromedriver)) = found else {
            let why = "chromium and chromedriver are needed on the PATH \
                       (apt-get install -y chromium chromium-driver; .ci/run does it)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}");
            }
            eprintln!("skipping the browser test: {why}");
            return None;
        };
        let addr = free_addr();
        let child = Command::new(chromedriver)
            .arg(format!("--port={}", addr.port()))
            // Loopback only: the test's own connections.
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = Driver {
            child,
            addr,
            chromium,
            profile: tempfile::tempdir().expect("tempdir"),
        };
        let deadline = Instant::now() + Duration::from_millis(DRIVER_START_TIMEOUT_MS);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(driver)
    }

    async fn browser(&self) -> Browser {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--no-proxy-server", "--window-size=1280,1000",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        tokio::time::timeout(
            Duration::from_millis(DRIVER_START_TIMEOUT_MS),
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://{}", self.addr)),
        )
        .await
        .expect("a browser session in time")
        .expect("a browser session")
    }
}

/// What the page shows, read from the DOM its script rendered.
async fn shown(browser: &Browser) -> Value {
    browser
        .execute(
            r##"
            const rows = [...document.querySelectorAll("#members tr[data-node]")].map(r => ({
                node: Number(r.dataset.node), state: r.dataset.state, role: r.dataset.role || null,
                applied: r.dataset.applied ? Number(r.dataset.applied) : null,
                commit: r.dataset.commit ? Number(r.dataset.commit) : null,
                leaderRow: r.classList.contains("leader"),
            }));
            const link = document.getElementById("leader-link");
            return {
                rows,
                leader: Number(document.getElementById("leader").dataset.leader) || null,
                link: link.hidden ? null : link.getAttribute("href"),
                ring: document.querySelectorAll("#ring g[data-node]").length,
                alarms: [...document.querySelectorAll("#alarms li[data-kind]")]
                    .map(a => ({ kind: a.dataset.kind, node: a.dataset.node ? Number(a.dataset.node) : null })),
                foreign: performance.getEntriesByType("resource")
                    .map(e => e.name).filter(n => !n.startsWith(location.origin)),
            };
            "##,
            vec![],
        )
        .await
        .expect("read the page")
}

/// Polls the page until `done` holds, within `timeout_ms`; returns what it showed then.
async fn wait_for(
    browser: &Browser,
    cluster: &Cluster,
    what: &str,
    timeout_ms: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let page = shown(browser).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {timeout_ms} ms; it shows {page:#}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn row(page: &Value, node: u64) -> Value {
    page["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == node).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn the_status_page_shows_members_the_leader_a_dead_node_and_its_catch_up() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let mut cluster = Cluster::start(3);
    runtime().block_on(async {
        let leader = cluster.wait_leader(Duration::from_secs(15)).await;
        let client = cluster.client();
        for i in 0..20 {
            client.set(format!("k{i}"), "v").await.expect("write");
        }
        // The page is opened on a follower; the leader is the node killed.
        let viewer = (1..=3).find(|&id| id != leader).expect("a follower");
        let browser = driver.browser().await;
        let url = format!("http://{}/", cluster.node(viewer).http);
        browser.goto(&url).await.expect("open the page");

        let page = wait_for(
            &browser,
            &cluster,
            "three members up and the leader",
            PAGE_CHANGE_TIMEOUT_MS,
            |p| {
                let rows = p["rows"].as_array().map_or(0, |r| r.len());
                rows == 3 && (1..=3).all(|id| row(p, id)["state"] == "up") && p["leader"] == leader
            },
        )
        .await;
        let leader_row = row(&page, leader);
        assert_eq!(leader_row["role"], "Leader", "{page:#}");
        assert_eq!(
            leader_row["leaderRow"], true,
            "the leader is highlighted: {page:#}"
        );
        for id in (1..=3).filter(|&id| id != leader) {
            assert_eq!(row(&page, id)["role"], "Follower", "{page:#}");
        }
        assert_eq!(page["ring"], 3, "every member is drawn: {page:#}");
        let leader_http = cluster.node(leader).http;
        assert_eq!(
            page["link"],
            format!("http://{leader_http}/"),
            "the page points at the leader's page: {page:#}"
        );
        assert_eq!(
            page["foreign"],
            json!([]),
            "nothing is loaded from elsewhere"
        );

        // Kill the leader: the page marks it down, and shows the new leader.
        let killed_at = Instant::now();
        cluster.kill(leader);
        let page = wait_for(
            &browser,
            &cluster,
            "the killed node down",
            PAGE_CHANGE_TIMEOUT_MS,
            |p| row(p, leader)["state"] == "down",
        )
        .await;
        eprintln!(
            "page marked node {leader} down after {:?}",
            killed_at.elapsed()
        );
        assert!(
            page["alarms"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["kind"] == "down" && a["node"] == leader)),
            "a down alarm names node {leader}: {page:#}"
        );
        let page = wait_for(&browser, &cluster, "a new leader", 15_000, |p| {
            p["leader"].as_u64().is_some_and(|l| l != leader)
        })
        .await;
        let new_leader = page["leader"].as_u64().expect("a leader");

        // Writes while it is down, then restart it: the page shows it up and caught up.
        for i in 0..50 {
            client
                .set(format!("later{i}"), "v")
                .await
                .expect("write with two of three");
        }
        let commit = cluster
            .wait_status(new_leader, "the new leader's status", |_| true)
            .await
            .status()
            .await
            .expect("status")
            .commit_index;
        cluster.spawn(leader);
        let page = wait_for(
            &browser,
            &cluster,
            "the restarted node caught up",
            CATCH_UP_TIMEOUT_MS,
            |p| {
                let r = row(p, leader);
                r["state"] == "up" && r["applied"].as_u64().is_some_and(|a| a >= commit)
            },
        )
        .await;
        assert_eq!(row(&page, leader)["role"], "Follower", "{page:#}");
        assert!(
            !page["alarms"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["kind"] == "down")),
            "no member is down any more: {page:#}"
        );
        browser.close().await.expect("close the browser");
    });
}
