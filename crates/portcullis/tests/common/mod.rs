//! Helpers shared by the tests that run the `portcullis` binary: a scratch directory,
//! a started gateway process (killed and reaped on every path) and readiness polling.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::*;

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// A fresh private directory named for the test.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `portcullis run` and returns it with its public and admin addresses, read
/// from its "portcullis listening" log line.
pub fn start(config: &std::path::Path) -> (Proc, String, String) {
    let mut cmd = bin();
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(config);
    start_cmd(cmd)
}

pub fn start_cmd(cmd: Command) -> (Proc, String, String) {
    let (proc_, public, admin, _) = start_cmd_logged(cmd);
    (proc_, public, admin)
}

/// The log lines a started process wrote to stderr so far.
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start`], keeping every later stderr line for the test to read.
pub fn start_logged(config: &std::path::Path) -> (Proc, String, String, Lines) {
    let mut cmd = bin();
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(config);
    start_cmd_logged(cmd)
}

/// [`start_cmd`], keeping every later stderr line.
pub fn start_cmd_logged(mut cmd: Command) -> (Proc, String, String, Lines) {
    // Wrapped at once so the child is killed and reaped on every path, panics included.
    let mut child = Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Ready for this test once it listens and the reloader handles SIGHUP.
    let deadline = Instant::now() + DEADLINE;
    let (mut addrs, mut watching) = (None, false);
    loop {
        assert!(Instant::now() < deadline, "the gateway never became ready");
        let line = lines.next().expect("log line").expect("utf-8");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match v["fields"]["message"].as_str() {
            Some("portcullis listening") => {
                let public = v["fields"]["public"].as_str().expect("public").to_owned();
                let admin = v["fields"]["admin"].as_str().expect("admin").to_owned();
                addrs = Some((public, admin));
            }
            Some(m) if m.starts_with("watching the config file") => watching = true,
            _ => {}
        }
        if let (Some((public, admin)), true) = (&addrs, watching) {
            let (public, admin) = (public.clone(), admin.clone());
            // Keep draining stderr so the child never blocks on a full pipe.
            let kept = Lines::default();
            let sink = kept.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if let Ok(mut v) = sink.lock() {
                        v.push(line);
                    }
                }
            });
            return (child, public, admin, kept);
        }
    }
}

/// Polls `url` until it answers 200, failing after [`DEADLINE`].
pub async fn wait_ok(url: &str) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Ok(r) = http_client().get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never answered 200");
}
