//! A real `redis-server` on a free loopback port, owned by one test.
//!
//! [`RedisServer::start`] runs `redis-server --bind 127.0.0.1 --port N
//! --save "" --appendonly no` in a fresh data directory under the system temp
//! dir, waits until it answers `PING`, and kills it (by its own PID) when
//! dropped. Tests that need persistence pass extra arguments through
//! [`RedisServer::start_with`] (`&["--appendonly", "yes"]`); the data
//! directory survives [`RedisServer::kill`] + [`RedisServer::restart`], so an
//! AOF written before a crash is read back.
//!
//! A missing `redis-server` binary is a test failure that says how to
//! install it, never a silent skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server has to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process bound to 127.0.0.1 on its own port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up in time.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra command-line arguments, which come after
    /// (and so override) the defaults, e.g. `&["--appendonly", "yes"]`.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up in time.
    pub fn start_with(args: &[&str]) -> RedisServer {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "event-router-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create redis data dir");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    /// One server shared by every test of this binary, started on first
    /// use. A static is never dropped, so a watchdog process kills the
    /// server (and removes its data dir) once this test process has exited.
    pub fn shared() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            let server = RedisServer::start();
            let script = format!(
                "while kill -0 {test} 2>/dev/null; do sleep 0.5; done; kill -9 {redis}; rm -rf '{dir}'",
                test = std::process::id(),
                redis = server.pid(),
                dir = server.dir.display(),
            );
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis watchdog");
            server
        })
    }

    fn spawn(&mut self) {
        let mut last_error = String::new();
        // A port picked as free can be taken before the server binds it; try
        // a few ports before giving up.
        for _ in 0..5 {
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&self.dir)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not installed; install it with \
                     `apt-get update && apt-get install -y redis-server`"
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            match wait_for_ping(self.port, &mut child) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    last_error = e;
                    let _ = child.kill();
                    let _ = child.wait();
                    self.port = free_port();
                }
            }
        }
        panic!("redis-server did not come up: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (AOF and RDB files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PID of the running server.
    ///
    /// # Panics
    /// When the server is not running (after [`RedisServer::kill`]).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed) and waits
    /// for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, data directory and
    /// arguments, killing it first if it runs.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn();
        assert_eq!(
            self.port, port,
            "port {port} was taken while redis-server was down"
        );
    }

    /// Sends a signal to the server, e.g. `"STOP"` or `"CONT"` to freeze and
    /// thaw it.
    ///
    /// # Panics
    /// When the server is not running or `kill` fails.
    pub fn stop_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// `EXEC` calls answered since start or the last `CONFIG RESETSTAT`
    /// (how many transactions the router ran).
    pub fn exec_calls(&self) -> u64 {
        self.command("INFO commandstats")
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_exec:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends one command (inline protocol) and returns the raw reply; for
    /// assertions on server state without a client library.
    pub fn command(&self, line: &str) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut buf = [0u8; 65536];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server ignores SIGKILL only until it is continued;
            // SIGKILL works on stopped processes too, but be explicit.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn wait_for_ping(port: u16, child: &mut Child) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited with {status} (port {port})"));
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if stream.write_all(b"PING\r\n").is_ok()
                && let Ok(n) = stream.read(&mut buf)
                && buf[..n].starts_with(b"+PONG")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no PONG on port {port} within {START_TIMEOUT:?}"))
}

/// A real Redis Cluster on loopback: `masters` masters with `replicas`
/// replicas each, every node a [`RedisServer`] started with
/// `--cluster-enabled yes` (its bus on a port of its own), joined by
/// `redis-cli --cluster create`. Ready once every node reports
/// `cluster_state:ok`. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, masters first as `redis-cli --cluster create` assigned them.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins the nodes; `extra` arguments go to every node.
    ///
    /// # Panics
    /// When a node does not start or the cluster does not become ready in
    /// 30 s.
    pub fn start(masters: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    bus.as_str(),
                    // Replicas sync at once (the default waits 5 s).
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                args.extend_from_slice(extra);
                RedisServer::start_with(&args)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and every
    /// replica has synced with its master.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let replication = n.command("INFO replication");
                n.command("CLUSTER INFO").contains("cluster_state:ok")
                    && (!replication.contains("role:slave")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not ready in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's URL, comma-separated (what `--redis` takes for a cluster).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs a command through `redis-cli -c` (follows slot redirects) on a
    /// running node; returns its raw output.
    pub fn command(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node");
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &node.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The master that serves `key`'s slot (index into [`Self::nodes`]).
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.command(&["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().parse().expect("CLUSTER KEYSLOT reply");
        let shards = self.command(&["CLUSTER", "SLOTS"]);
        // Lines: start, end, master ip, master port, master id, replicas...
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(lo), Ok(hi)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && lines[i + 2] == "127.0.0.1"
                && let Ok(port) = lines[i + 3].parse::<u16>()
                && (lo..=hi).contains(&slot)
            {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("known node");
            }
            i += 1;
        }
        panic!("no master for slot {slot} in {shards}");
    }
}

/// A unique key prefix, so that brokers of different tests share nothing.
pub fn key_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// The key id (`sid`) of durable subscription `name` under `prefix`, read
/// from its record in the routing config.
///
/// # Panics
/// When the subscription has no readable record.
pub async fn subscription_sid(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    name: &str,
) -> String {
    let record: String = redis::cmd("HGET")
        .arg(format!("{prefix}:{{cfg}}:subs"))
        .arg(name)
        .query_async(conn)
        .await
        .expect("subscription record");
    let record: serde_json::Value = serde_json::from_str(&record).expect("record JSON");
    record["sid"].as_str().expect("sid").to_string()
}
