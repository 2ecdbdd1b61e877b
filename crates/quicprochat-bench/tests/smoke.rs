//! Every scenario at a tiny size, so the tool keeps working. No timing is asserted: only that
//! each scenario runs, reports its figures as JSON, and did some work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_qpc-bench"))
        .args(args)
        .args(["--json", "--clients", "2", "--duration", "0.5", "--payload", "64"])
        .output()
        .expect("qpc-bench runs");
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?} printed {line:?}: {e}")))
        .collect()
}

fn figure(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name:?} in {report}"))
        .clone()
}

#[test]
fn baselines_run() {
    let echo = &run(&["echo-baseline"])[0];
    assert_eq!(echo["scenario"], "echo-baseline");
    assert!(figure(echo, "requests/s")["value"].as_f64().unwrap() > 0.0);
    let sqlite = &run(&["sqlite-baseline"])[0];
    assert!(figure(sqlite, "inserts/s")["value"].as_f64().unwrap() > 0.0);
    let push = &run(&["push-baseline", "--rate", "20"])[0];
    assert!(figure(push, "push latency p50")["value"].as_f64().is_some());
}

#[test]
fn relay_and_fanout_run_against_a_real_server() {
    let relay = &run(&["relay"])[0];
    let throughput = figure(relay, "relay messages/s vs echo");
    assert!(throughput["value"].as_f64().unwrap() > 0.0, "messages were relayed: {relay}");
    assert!(throughput["ratio"].as_f64().is_some(), "reported against the echo baseline");
    assert!(relay["server"]["cpu_secs"].as_f64().is_some());
    let fanout = &run(&["fanout", "--rate", "10"])[0];
    assert!(figure(fanout, "push latency p99")["baseline"].as_f64().is_some());
}

#[test]
fn raw_relay_and_fanout_run_against_a_real_server() {
    let relay = &run(&["relay", "--raw", "--in-flight", "2"])[0];
    assert_eq!(relay["scenario"], "relay --raw");
    assert!(
        figure(relay, "relay messages/s vs echo")["value"].as_f64().unwrap() > 0.0,
        "messages were relayed: {relay}"
    );
    assert!(figure(relay, "Enqueue vs echo latency p50")["baseline"].as_f64().is_some());
    assert!(figure(relay, "send→receive vs echo latency p99")["value"].as_f64().unwrap() > 0.0);
    let fanout = &run(&["fanout", "--raw", "--rate", "10"])[0];
    assert_eq!(fanout["scenario"], "fanout --raw");
    assert!(figure(fanout, "push latency max")["value"].as_f64().unwrap() > 0.0, "pushes arrived: {fanout}");
    assert!(figure(fanout, "push latency p99")["baseline"].as_f64().is_some());
    assert!(figure(fanout, "Enqueue latency p50")["value"].as_f64().unwrap() > 0.0);
}

#[test]
fn login_connect_and_idle_run() {
    let login = &run(&["login"])[0];
    assert!(figure(login, "connect+login/s vs handshakes/s")["value"].as_f64().unwrap() > 0.0);
    let connect = &run(&["connect"])[0];
    assert!(figure(connect, "handshakes/s")["value"].as_f64().unwrap() > 0.0);
    let idle = &run(&["idle"])[0];
    assert!(figure(idle, "server memory per idle authenticated connection")["value"].is_number());
}
