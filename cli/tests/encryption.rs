//! `imprint` on end-to-end encrypted topics (docs/encryption.md), against a real server:
//! `topics create --recipient`, `publish` encrypting to the topic's recipients (from a
//! file and from standard input, inline and as an object), `--schema` checked before
//! anything is sent, `get --identity` decrypting, and clear errors without the identity,
//! with the wrong one and for a tampered chunk.
#![allow(clippy::unwrap_used)]

use imprint_client::crypt;
use imprint_testkit::*;
use std::path::Path;
use std::process::{Command, Stdio};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "exit status; stderr:\n{}", self.stderr);
        self
    }
    fn failed(self) -> Self {
        assert_ne!(self.code, 0, "should have failed; stderr:\n{}", self.stderr);
        self
    }
}

/// The CLI's temporary directory (its spool files), to see that it leaves none.
fn cli_tmp() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| scratch_dir("cli-tmp")).clone()
}

async fn run(server: &TestApp, args: &[&str], stdin: Option<Vec<u8>>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imprint"));
    cmd.args(args)
        .env("IMPRINT_URL", server.base_url())
        .env("IMPRINT_TOKEN", ADMIN_TOKEN)
        .env_remove("RUST_LOG")
        .env("TMPDIR", cli_tmp());
    let out = tokio::task::spawn_blocking(move || {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().unwrap();
        if let Some(bytes) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn publish_encrypts_to_the_topic_and_get_decrypts_with_the_identity(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-e2e");
    let (s1, r1) = crypt::generate();
    let (s2, r2) = crypt::generate();
    let id1 = write(&dir, "one.key", format!("# public key: {r1}\n{s1}\n").as_bytes());
    let id2 = write(&dir, "two.key", s2.as_bytes());
    let (other, _) = crypt::generate();
    let wrong = write(&dir, "wrong.key", other.as_bytes());
    run(
        &server,
        &["topics", "create", "db.creds", "--owner", "payments", "--recipient", &r1, "--recipient", &r2],
        None,
    )
    .await
    .ok();
    let shown = run(&server, &["topics", "show", "db.creds"], None).await.ok();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("end_to_end for 2 recipient(s)") && shown.contains(&r1), "{shown}");

    // A file: encrypted before it leaves, to both recipients (the server checks the count).
    let creds = format!("{{\"password\": \"{MARKER}\"}}");
    let file = write(&dir, "creds.json", creds.as_bytes());
    let out = run(&server, &["publish", "db.creds", &file], None).await.ok();
    assert!(out.stderr.contains("encrypted for the topic's 2 recipient(s)"), "{}", out.stderr);
    let inline: Vec<u8> =
        sqlx::query_scalar("SELECT inline_data FROM versions WHERE version = 1").fetch_one(&server.pool).await.unwrap();
    assert!(crypt::is_age(&inline) && !contains(&inline, MARKER));
    // Each recipient's identity decrypts it, to a file (mode 0600) or standard output.
    let target = dir.join("out.json");
    run(&server, &["get", "db.creds", "--version", "1", "--identity", &id1, "-o", &target.to_string_lossy()], None)
        .await
        .ok();
    assert_eq!(std::fs::read(&target).unwrap(), creds.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    let out = run(&server, &["get", "db.creds", "--identity", &id2], None).await.ok();
    assert_eq!(out.stdout, creds.as_bytes());
    // Without an identity: refused, unless the ciphertext is asked for.
    let out = run(&server, &["get", "db.creds", "--version", "1"], None).await.failed();
    assert!(out.stderr.contains("end-to-end encrypted: give --identity FILE"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = run(&server, &["get", "db.creds", "--version", "1", "--raw"], None).await.ok();
    assert_eq!(out.stdout, inline);
    let out = run(&server, &["get", "db.creds", "--identity", &wrong], None).await.failed();
    assert!(out.stderr.contains("none of the given identities"), "{}", out.stderr);

    // Standard input, past the inline limit: encrypted straight into the upload spool.
    run(&server, &["topics", "set", "db.creds", "--inline-limit", "4KiB"], None).await.ok();
    let big = MARKER.repeat(30_000).into_bytes();
    run(&server, &["publish", "db.creds", "-"], Some(big.clone())).await.ok();
    let spool: Vec<_> = std::fs::read_dir(cli_tmp()).unwrap().collect();
    assert!(spool.is_empty(), "the CLI leaves no spool file behind: {spool:?}");
    let out = run(&server, &["get", "db.creds", "--version", "2", "--identity", &id1], None).await.ok();
    assert_eq!(out.stdout, big);

    // A JSON Schema the server cannot run on ciphertext runs here, before anything is sent.
    let schema = write(&dir, "schema.json", br#"{"type": "object", "required": ["password", "user"]}"#);
    let out = run(&server, &["publish", "db.creds", &file, "--schema", &schema], None).await.failed();
    assert!(out.stderr.contains("does not satisfy the schema"), "{}", out.stderr);
    assert_eq!(server.versions_in_db("db.creds").await, 2, "nothing was sent");

    // A tampered chunk (header intact, so the server takes it): get fails clearly, and
    // leaves no output file.
    let mut tampered = crypt::encrypt(&[r1.clone(), r2.clone()], b"{\"password\": \"x\"}").unwrap();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    server.publish_raw("db.creds", tampered).await;
    let bad_out = dir.join("bad.json");
    let out = run(
        &server,
        &["get", "db.creds", "--version", "3", "--identity", &id1, "-o", &bad_out.to_string_lossy()],
        None,
    )
    .await
    .failed();
    assert!(out.stderr.contains("cannot decrypt the payload"), "{}", out.stderr);
    assert!(!bad_out.exists());
    let _ = std::fs::remove_dir_all(dir);
}
