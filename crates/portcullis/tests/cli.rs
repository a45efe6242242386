//! The `portcullis` binary as an operator runs it: `check` exit codes, messages and
//! certificate expiry dates,
//! SIGHUP reload, and SIGTERM draining an in-flight call before exiting.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis_e2e::*;
use serde_json::json;

#[test]
fn check_prints_when_each_certificate_expires() {
    let dir = scratch("check-tls");
    let ca = portcullis_e2e::pki::TestCa::new("check ca");
    ca.server(&["gw.test"]).write(&dir, "gw");
    let yaml = config_for("http://127.0.0.1:9/mcp", "").replacen(
        "  admin: 127.0.0.1:0\n",
        "  admin: 127.0.0.1:0\n  tls:\n    address: 127.0.0.1:0\n    certificates:\n      - cert_file: gw.crt\n        key_file: gw.key\n",
        1,
    );
    let path = dir.join("tls.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // rcgen's default validity ends in 4096.
    assert!(
        stdout.contains("certificate listeners.tls gw.test: expires 4096-01-01T00:00:00Z ("),
        "{stdout}"
    );
}

#[test]
fn check_accepts_a_good_file_and_names_file_line_and_key_of_a_bad_one() {
    let dir = scratch("check");
    let good = dir.join("good.yaml");
    std::fs::write(&good, config_for("http://127.0.0.1:9/mcp", "")).expect("write");
    let out = bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        config_for("http://127.0.0.1:9/mcp", "").replace("upstream: main", "upstream: missing"),
    )
    .expect("write");
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:10: key `routes[0].upstream`: no upstream named `missing`"),
        "{err}"
    );

    let out = bin()
        .args(["check", "--config"])
        .arg(dir.join("absent.yaml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

fn signal(p: &Proc, sig: i32) {
    let pid = i32::try_from(p.0.id()).expect("pid");
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_in_flight_calls() {
    let upstream = Upstream::demo().await;
    let dir = scratch("signals");
    let config = dir.join("portcullis.yaml");
    std::fs::write(
        &config,
        // The process default (per-thread runtimes), unlike the in-process harness.
        config_for(&upstream.url, "")
            .replace("grace_period: 0s", "grace_period: 20s")
            .replace("  work_stealing: true\n", "")
            + "access_log:\n  enabled: false\n",
    )
    .expect("write");
    let (proc_, public, admin) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || start(&c)
    })
    .await
    .expect("start");
    wait_ok(&format!("http://{admin}/healthz")).await;

    // SIGHUP reloads even when the file is unchanged.
    signal(&proc_, libc::SIGHUP);
    let admin_url = format!("http://{admin}");
    wait_metrics_at(&admin_url, "the SIGHUP reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;

    // A call in flight when SIGTERM arrives still completes; then the process exits.
    let url = format!("http://{public}/mcp");
    let call = spawn_slow_call(&url);
    wait_metrics_at(&admin_url, "the call in flight", |m| {
        m.contains("portcullis_open_streams{route=\"/mcp\"} 1")
    })
    .await;
    signal(&proc_, libc::SIGTERM);
    let body = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("call ends")
        .expect("task");
    assert!(body.contains("done after 3 steps"), "{body}");

    let mut proc_ = proc_;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = proc_.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit after draining");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("wait task");
    assert!(status.success(), "{status:?}");
    // New connections are refused after the drain began.
    assert!(http_client().post(&url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_requires_a_token_and_portcullis_token_mints_one_it_accepts() {
    let mut cmd = bin();
    cmd.args([
        "--log-format",
        "json",
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let (_demo, public, admin) = tokio::task::spawn_blocking(move || start_cmd(cmd))
        .await
        .expect("start");
    wait_ok(&format!("http://{admin}/healthz")).await;
    let url = format!("http://{public}/mcp");

    let r = stateless_call(&http_client(), &url, "echo", json!({"text": "no token"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("resource_metadata="));

    let out = bin()
        .args(["token", "--subject", "tester"])
        .output()
        .expect("token");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let r = stateless_call(&http_client(), &url, "echo", json!({"text": "with token"}))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("with token"));

    let out = bin()
        .args(["token", "--scope", "other:scope"])
        .output()
        .expect("token");
    let weak = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let r = stateless_call(&http_client(), &url, "echo", json!({"text": "x"}))
        .bearer_auth(&weak)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 403, "a token without mcp:tools");

    // The demo policy: delete_file (destructive) only for group admins.
    let mint = |args: &[&str]| {
        let out = bin().arg("token").args(args).output().expect("token");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let delete = |token: String| {
        let url = url.clone();
        async move {
            let r = stateless_call(
                &http_client(),
                &url,
                "delete_file",
                json!({"path": "/tmp/x"}),
            )
            .bearer_auth(token)
            .send()
            .await
            .expect("answer");
            let body = r.text().await.expect("body");
            messages(&body)
                .first()
                .map(|m| m["error"]["code"].clone())
                .unwrap_or_default()
        }
    };
    assert_eq!(
        delete(mint(&[])).await,
        json!(-32016),
        "denied to a plain user"
    );
    assert_eq!(
        delete(mint(&["--group", "admins"])).await,
        serde_json::Value::Null,
        "allowed to admins"
    );
}

#[test]
fn policy_test_runs_the_tables_beside_each_policy_and_fails_on_a_wrong_row() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(examples)
        .expect("policies/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    let out = bin()
        .args(["policy", "test"])
        .args(&files)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("per-team.yaml"), "{text}");

    let dir = scratch("policy-test");
    std::fs::write(
        dir.join("p.yaml"),
        "default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: ok}]}\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("p.tests.yaml"),
        "- {name: right, tool: ok, expect: allow, rule: a}\n- {name: wrong, tool: nope, expect: allow}\n",
    )
    .expect("write");
    std::fs::write(dir.join("lonely.yaml"), "default: allow\n").expect("write");
    std::fs::write(
        dir.join("broken.yaml"),
        "default: allow\nrules:\n  - name: x\n    effect: perhaps\n",
    )
    .expect("write");
    let out = bin()
        .args(["policy", "test"])
        .arg(dir.join("p.yaml"))
        .arg(dir.join("p.tests.yaml"))
        .arg(dir.join("lonely.yaml"))
        .arg(dir.join("broken.yaml"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("wrong: expected allow, got deny (rule default)"),
        "{text}"
    );
    assert!(
        text.contains("lonely.tests.yaml"),
        "a policy without tables fails: {text}"
    );
    assert!(
        text.contains("broken.yaml:4"),
        "names the broken line: {text}"
    );
    assert!(text.contains("1 passed, 3 failed"), "{text}");

    // A directory stands for the policy files in it, tables skipped.
    let out = bin()
        .args(["policy", "test"])
        .arg(examples)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("per-team.yaml"), "{text}");
    assert!(
        !text.contains("tests.yaml (") && !text.contains("Is a directory"),
        "{text}"
    );
    let out = bin()
        .args(["policy", "test"])
        .arg(&dir)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("1 passed, 3 failed"),
        "the same files as listed: {text}"
    );
    let empty = scratch("policy-test-empty");
    let out = bin()
        .args(["policy", "test"])
        .arg(&empty)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("holds no policy file"), "{text}");
}

#[test]
fn policy_explain_prints_the_decision_and_every_matching_rule() {
    let dir = scratch("explain");
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/per-team.yaml");
    let yaml = config_for("http://127.0.0.1:9/mcp", "").replace(
        "    upstream: main\n",
        &format!("    upstream: main\n    policy: {policies}\n"),
    );
    let config = dir.join("gw.yaml");
    std::fs::write(&config, yaml).expect("write");
    let explain = |args: &[&str]| {
        let out = bin()
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, _) = explain(&[
        "--subject",
        "dana",
        "--group",
        "data",
        "--tool",
        "sql_drop_table",
    ]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("decision: deny (rule no-drops)"), "{text}");
    assert!(
        text.contains("allow  data-sql") && text.contains("deny   no-drops"),
        "{text}"
    );
    let (_, text, _) = explain(&["--tool", "docs_search", "--annotation", "readOnlyHint=true"]);
    assert!(
        text.starts_with("decision: hide (rule anonymous-sees-nothing)"),
        "{text}"
    );
    assert!(text.contains("caller:   anonymous"), "{text}");
    let (code, _, err) = explain(&["--tool", "x", "--annotation", "readOnly=yes"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("annotation"), "{err}");
    let (code, _, err) = explain(&["--subject", "a"]);
    assert_eq!(code, Some(2), "no target");
    assert!(err.contains("tool"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_logged_once_and_log_writes_beside_the_config_reload_nothing() {
    let upstream = Upstream::demo().await;
    let dir = scratch("refused-once");
    let config = dir.join("portcullis.yaml");
    let access = dir.join("access.log");
    let good = config_for(&upstream.url, "").replace("  work_stealing: true\n", "")
        + &format!("access_log:\n  output: {}\n", access.display());
    std::fs::write(&config, &good).expect("write");
    let (_proc, public, admin, lines) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || start_logged(&c)
    })
    .await
    .expect("start");
    let admin_url = format!("http://{admin}");
    wait_ok(&format!("{admin_url}/healthz")).await;

    // A broken edit: refused once and logged.
    let broken = format!("{good}bogus_key: 1\n");
    std::fs::write(&config, &broken).expect("write");
    wait_metrics_at(&admin_url, "the refused reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    // Traffic writes the access log beside the broken config.
    let url = format!("http://{public}/mcp");
    for i in 0..5 {
        let r = stateless_call(&http_client(), &url, "echo", json!({"text": i}))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "the previous config serves");
        let _ = r.text().await;
    }
    let deadline = Instant::now() + DEADLINE;
    while std::fs::read_to_string(&access)
        .unwrap_or_default()
        .lines()
        .count()
        < 5
    {
        assert!(
            Instant::now() < deadline,
            "the access log was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same broken content written again: tried again, not logged again.
    std::fs::write(&config, &broken).expect("write");
    let m = wait_metrics_at(&admin_url, "the second refused reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"failure\"} 2")
    })
    .await;
    assert!(
        !m.contains("portcullis_config_reloads_total{result=\"failure\"} 3"),
        "the access log's writes triggered reloads: {m}"
    );
    let refused = |lines: &Lines| {
        lines
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|l| l.contains("config reload refused"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(refused(&lines), 1, "one line per distinct refused content");

    // A different broken content is news: logged.
    std::fs::write(&config, format!("{good}other_bogus: 2\n")).expect("write");
    let deadline = Instant::now() + DEADLINE;
    while refused(&lines) < 2 {
        assert!(Instant::now() < deadline, "a new refusal was never logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
