//! Playbooks through the real binary: the examples CI runs, a failing step, a malformed file.

use std::path::PathBuf;

use crate::harness::{qpc, stderr, stdout};

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/playbooks").join(name);
    path.display().to_string()
}

fn run_playbook(file: &str) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    qpc(&["playbook", "run", file], "", home.path())
}

#[test]
fn dm_playbook_passes() {
    let out = run_playbook(&example("dm.yaml"));
    assert!(out.status.success(), "dm.yaml failed:\n{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("reacted 👍 to"), "{text}");
    assert!(text.contains("[alice] hello again, bob (edited) [👍 bob]"), "{text}");
    assert!(text.contains("✔ playbook passed: 13 steps"), "{text}");
}

#[test]
fn group_playbook_passes() {
    let out = run_playbook(&example("group.yaml"));
    assert!(out.status.success(), "group.yaml failed:\n{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("removed carol from team"), "{text}");
    assert!(text.contains("✔ playbook passed:"), "{text}");
}

#[test]
fn a_failing_step_is_named_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fails.yaml");
    std::fs::write(
        &file,
        "steps:\n  - as: alice\n    run: /dm bob\n  - as: alice\n    run: hello\n  - name: bob hears something else\n    as: bob\n    expect: {message: goodbye, from: alice, timeout: 2}\n",
    )
    .unwrap();
    let out = run_playbook(&file.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("step 3 (bob hears something else) as bob failed"), "{err}");
    assert!(err.contains("unmatched:") && err.contains("message from alice \"hello\""), "{err}");

    // A malformed playbook is a usage error, reported before anything runs.
    std::fs::write(&file, "steps:\n  - as: alice\n    run: /frobnicate\n").unwrap();
    let out = run_playbook(&file.display().to_string());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("step 1: unknown command /frobnicate"), "{}", stderr(&out));
}
