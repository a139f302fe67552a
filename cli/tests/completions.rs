//! `imprint completions SHELL`: a completion script, printed without any server.
use std::process::Command;

fn completions(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["completions", shell])
        // Neither a server nor a valid URL is needed.
        .env("IMPRINT_URL", "not a url")
        .env_remove("IMPRINT_TOKEN")
        .output()
        .expect("run imprint");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit status {:?}; stderr:\n{stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
    String::from_utf8(out.stdout).expect("utf-8 script")
}

#[test]
fn bash_completions_know_the_subcommands() {
    let script = completions("bash");
    assert!(script.contains("complete -F _imprint"), "not a bash completion script:\n{script}");
    for word in ["publish", "rollout", "topics", "consumers", "watch", "completions", "--json", "--labels"] {
        assert!(script.contains(word), "{word:?} missing from the bash script");
    }
}

#[test]
fn zsh_and_fish_completions() {
    let zsh = completions("zsh");
    assert!(zsh.starts_with("#compdef imprint"), "{zsh}");
    assert!(zsh.contains("publish") && zsh.contains("rollout"));
    let fish = completions("fish");
    assert!(fish.contains("complete -c imprint"), "{fish}");
    assert!(fish.contains("publish") && fish.contains("rollout"));
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_imprint")).args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}
