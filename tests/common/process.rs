//! A real `event-router` process for end-to-end tests (owned by the CLI work).
//!
//! [`RouterProcess::start`] runs the built binary as
//! `event-router serve --listen 127.0.0.1:0 ARGS...`, reads its output until
//! the stable startup line `listening on ADDR` (stderr) to learn the port,
//! and kills the process on `Drop`. [`run`] runs any subcommand to
//! completion with a deadline; [`Child`] runs one in the background (e.g.
//! `tail`) and reads its output lines with a timeout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the `event-router` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_event-router");

/// How long [`RouterProcess::start`] waits for the listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which stream a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A child process whose stdout and stderr lines are captured by two reader
/// threads; killed on `Drop`.
pub struct Child {
    child: std::process::Child,
    lines: Receiver<(Stream, String)>,
    /// Lines received but not yet consumed by [`Child::line_matching`].
    pending: Mutex<VecDeque<(Stream, String)>>,
    log: Arc<Mutex<Vec<(Stream, String)>>>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `event-router ARGS...` with `envs` added to the environment
    /// and stdin closed.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Child {
        let mut command = Command::new(BIN);
        command.args(args).envs(envs.iter().copied());
        // For diagnosing a run by hand: a log filter over the test's own.
        if let Ok(filter) = std::env::var("EVENT_ROUTER_TEST_RUST_LOG") {
            command.env("RUST_LOG", filter);
        }
        command
            .env_remove("EVENT_ROUTER_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} {args:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // For diagnosing a run by hand (a hang, say): every line also goes
        // to `<dir>/<pid>.log` as it arrives.
        let copy = std::env::var_os("EVENT_ROUTER_TEST_LOG_DIR").map(|dir| {
            let path = std::path::Path::new(&dir).join(format!("{}.log", child.id()));
            std::fs::File::create(&path)
                .map(|f| Arc::new(Mutex::new(f)))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
        });
        let readers = vec![
            forward(
                stdout,
                Stream::Stdout,
                tx.clone(),
                log.clone(),
                copy.clone(),
            ),
            forward(stderr, Stream::Stderr, tx, log.clone(), copy),
        ];
        Child {
            child,
            lines,
            pending: Mutex::default(),
            log,
            readers,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the next line on `stream` that satisfies
    /// `want`; lines of `stream` before it are consumed, lines of the other
    /// stream stay queued for later calls. `None` on timeout or when the
    /// process closed its output.
    pub fn line_matching(
        &self,
        stream: Stream,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = pending.iter().position(|(s, _)| *s == stream) {
            let (_, line) = pending.remove(i).expect("index is in range");
            if want(&line) {
                return Some(line);
            }
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((s, line)) if s == stream => {
                    if want(&line) {
                        return Some(line);
                    }
                }
                Ok(other) => pending.push_back(other),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The next stdout line within `timeout`.
    pub fn stdout_line(&self, timeout: Duration) -> Option<String> {
        self.line_matching(Stream::Stdout, timeout, |_| true)
    }

    /// Everything captured so far, stdout and stderr interleaved, with a
    /// prefix naming the stream.
    pub fn output(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .map(|(s, line)| match s {
                Stream::Stdout => format!("[stdout] {line}"),
                Stream::Stderr => format!("[stderr] {line}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Captured lines of one stream, joined by newlines.
    pub fn captured(&self, stream: Stream) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, line)| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    // The pipes close with the process: collect the last lines.
                    for reader in std::mem::take(&mut self.readers) {
                        let _ = reader.join();
                    }
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for pid {}: {e}", self.pid()),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Already-exited processes make kill fail harmlessly.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward(
    stream: impl Read + Send + 'static,
    which: Stream,
    tx: mpsc::Sender<(Stream, String)>,
    log: Arc<Mutex<Vec<(Stream, String)>>>,
    copy: Option<Arc<Mutex<std::fs::File>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(file) = &copy {
                use std::io::Write;
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(file, "{line}");
            }
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((which, line.clone()));
            // The receiver may be gone; the log still keeps the line.
            let _ = tx.send((which, line));
        }
    })
}

/// The address in a `listening on ADDR` line, wherever it stands in the line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// A running `event-router serve` on a free loopback port.
pub struct RouterProcess {
    child: Child,
    addr: SocketAddr,
}

impl RouterProcess {
    /// Starts `event-router serve --listen 127.0.0.1:0 ARGS...` and waits
    /// (at most [`START_TIMEOUT`]) for its listening line.
    ///
    /// # Panics
    /// When the process exits or stays silent, with everything it printed.
    pub fn start(args: &[&str]) -> RouterProcess {
        Self::start_with_env(args, &[])
    }

    /// As [`RouterProcess::start`], with extra environment variables.
    ///
    /// # Panics
    /// As [`RouterProcess::start`].
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> RouterProcess {
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let mut child = Child::spawn(&argv, envs);
        let line = child.line_matching(Stream::Stderr, START_TIMEOUT, |l| {
            l.starts_with("listening on ")
        });
        let Some(addr) = line.as_deref().and_then(parse_listening_line) else {
            let status = child.wait_exit(Duration::from_millis(200));
            panic!(
                "event-router {argv:?} did not print `listening on ADDR` within {START_TIMEOUT:?} \
                 (exit status: {status:?}); output:\n{}",
                child.output()
            );
        };
        RouterProcess { child, addr }
    }

    /// The address it listens on (127.0.0.1 and the port it picked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.child.signal("TERM");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.child.output()
    }
}

/// The result of a command run to completion.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Finished {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `event-router ARGS...` to completion, killing it after `timeout`.
///
/// # Panics
/// When it does not finish in time, with what it printed.
pub fn run(args: &[&str], timeout: Duration) -> Finished {
    run_with_env(args, &[], timeout)
}

/// As [`run`], with extra environment variables.
///
/// # Panics
/// As [`run`].
pub fn run_with_env(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Finished {
    let mut child = Child::spawn(args, envs);
    let Some(status) = child.wait_exit(timeout) else {
        panic!(
            "event-router {args:?} did not finish within {timeout:?}; output:\n{}",
            child.output()
        );
    };
    Finished {
        status,
        stdout: child.captured(Stream::Stdout),
        stderr: child.captured(Stream::Stderr),
    }
}
