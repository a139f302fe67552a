//! The configuration as a whole: the documented example, the first bad key named (with its
//! line), the environment overrides, relay mode and several servers.

use super::values::parse_owner;
use super::*;

const EXAMPLE: &str = r#"
server = "http://127.0.0.1:3000"
token = "t0ken"
state_dir = "/var/lib/imprint-agent"
listen = "127.0.0.1:7480"

[labels]
region = "eu-west-1"
app = "checkout"

[[subscription]]
topic = "payments.methods"
path = "/etc/checkout/methods.json"
check = "python3 -m json.tool {path}"
reload = "systemctl reload checkout"
timeout = "10s"
keep = 3
appconfig = "checkout/prod/methods"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn reads_the_documented_example() {
    let c = Config::parse(EXAMPLE, no_env).unwrap();
    assert_eq!(c.server, "http://127.0.0.1:3000");
    assert_eq!(c.token.as_deref(), Some("t0ken"));
    assert_eq!(c.listen, Listen::Tcp("127.0.0.1:7480".parse().unwrap()));
    assert_eq!(c.labels["region"], "eu-west-1");
    let s = &c.subscriptions[0];
    assert_eq!(
        (s.topic.as_str(), s.mode, s.timeout, s.keep, s.required),
        ("payments.methods", 0o644, DEFAULT_TIMEOUT, 3, true)
    );
    assert_eq!(s.check.as_deref(), Some("python3 -m json.tool {path}"));
    assert_eq!(s.appconfig, Some(("checkout".into(), "prod".into(), "methods".into())));
    let e = Config::parse(&EXAMPLE.replace("checkout/prod/methods", "checkout/../x"), no_env).unwrap_err().0;
    assert!(e.starts_with("subscription[0].appconfig:"), "{e}");
}

#[test]
fn names_the_first_bad_key_and_its_line() {
    let typo = EXAMPLE.replace("reload =", "relaod =");
    let e = Config::parse(&typo, no_env).unwrap_err().0;
    assert!(e.starts_with("line 15:") && e.contains("relaod"), "{e}");
    let e = Config::parse(&EXAMPLE.replace("\"10s\"", "\"soon\""), no_env).unwrap_err().0;
    assert!(e.starts_with("subscription[0].timeout:"), "{e}");
    let e = Config::parse(&EXAMPLE.replace("payments.methods", "Bad Topic"), no_env).unwrap_err().0;
    assert!(e.starts_with("subscription[0].topic:"), "{e}");
    let e = Config::parse(&EXAMPLE.replace("keep = 3", "keep = 3\nmode = \"999\""), no_env).unwrap_err().0;
    assert!(e.starts_with("subscription[0].mode:"), "{e}");
    let e =
        Config::parse(&EXAMPLE.replace("keep = 3", "keep = 3\nowner = \"no-such-user-here\""), no_env).unwrap_err().0;
    assert!(e.starts_with("subscription[0].owner:") && e.contains("no user named"), "{e}");
    let c = Config::parse(&EXAMPLE.replace("keep = 3", "keep = 3\nowner = \"root:0\""), no_env).unwrap();
    assert_eq!(c.subscriptions[0].owner, Some((Some(0), Some(0))));
    assert_eq!(parse_owner(":1").unwrap(), (None, Some(1)));
    let e = Config::parse(&EXAMPLE.replace("state_dir", "#state_dir"), no_env).unwrap_err().0;
    assert!(e.starts_with("state_dir: missing"), "{e}");
    let e = Config::parse(&EXAMPLE.replace("127.0.0.1:7480", "everywhere"), no_env).unwrap_err().0;
    assert!(e.starts_with("listen:"), "{e}");
    let e = Config::parse(&EXAMPLE.replace("region =", "\"Region!\" ="), no_env).unwrap_err().0;
    assert!(e.starts_with("labels:"), "{e}");
    let keyring = EXAMPLE.replace("listen =", "snapshot_keyring = \"/etc/imprint/keyring.json\"\nlisten =");
    let e = Config::parse(&keyring, no_env).unwrap_err().0;
    assert!(e.starts_with("snapshot_keyring:") && e.contains("snapshot_store"), "{e}");
    let c =
        Config::parse(&keyring.replace("listen =", "snapshot_store = \"file:///srv/s\"\nlisten ="), no_env).unwrap();
    assert_eq!(c.snapshot_keyring, Some("/etc/imprint/keyring.json".into()));
    let twice = format!("{EXAMPLE}\n[[subscription]]\ntopic = \"payments.methods\"\n");
    assert!(Config::parse(&twice, no_env).unwrap_err().0.contains("subscribed twice"));
}

#[test]
fn environment_overrides_the_file() {
    let env = |k: &str| match k {
        "IMPRINT_AGENT_SERVER" => Some("https://imprint.internal".to_owned()),
        "IMPRINT_AGENT_TOKEN" => Some("from-env".to_owned()),
        "IMPRINT_AGENT_LISTEN" => Some("unix:/run/imprint-agent.sock".to_owned()),
        _ => None,
    };
    let c = Config::parse(EXAMPLE, env).unwrap();
    assert_eq!(c.server, "https://imprint.internal");
    assert_eq!(c.token.as_deref(), Some("from-env"));
    assert_eq!(c.listen, Listen::Unix("/run/imprint-agent.sock".into()));
}

#[test]
fn relay_mode_needs_its_token_and_may_go_without_subscriptions() {
    let head = "server = \"http://127.0.0.1:3000\"\nstate_dir = \"/tmp/x\"\n";
    let c = Config::parse(&format!("{head}[relay]\ntoken = \"r\"\nmax_groups = 8\nwait = \"20s\"\n"), no_env).unwrap();
    let r = c.relay.unwrap();
    assert_eq!(
        (r.token.as_str(), r.max_groups, r.max_polls, r.wait),
        ("r", 8, DEFAULT_RELAY_POLLS, Duration::from_secs(20))
    );
    assert!(c.subscriptions.is_empty());
    let e = Config::parse(&format!("{head}[relay]\nmax_groups = 8\n"), no_env).unwrap_err().0;
    assert!(e.starts_with("relay.token: missing"), "{e}");
    let e = Config::parse(&format!("{head}[relay]\ntoken = \"r\"\nwait = \"2m\"\n"), no_env).unwrap_err().0;
    assert!(e.starts_with("relay.wait:"), "{e}");
    let e = Config::parse(&format!("{head}[relay]\ntoken = \"r\"\nmax_grups = 1\n"), no_env).unwrap_err().0;
    assert!(e.contains("max_grups"), "{e}");
    let e = Config::parse(&format!("{head}listen = \"off\"\n[relay]\ntoken = \"r\"\n"), no_env).unwrap_err().0;
    assert!(e.starts_with("listen:"), "{e}");
    let env = |k: &str| (k == "IMPRINT_AGENT_RELAY_TOKEN").then(|| "from-env".to_owned());
    assert_eq!(Config::parse(head, env).unwrap().relay.unwrap().token, "from-env");
    assert!(Config::parse(head, no_env).unwrap_err().0.starts_with("subscription:"));
}

#[test]
fn servers_are_tried_in_order() {
    let many = EXAMPLE.replace("server = \"http://127.0.0.1:3000\"", "servers = [\"http://a:1\", \"http://b:2\"]");
    let c = Config::parse(&many, no_env).unwrap();
    assert_eq!((c.server.as_str(), c.fallback_servers.as_slice()), ("http://a:1", &["http://b:2".to_owned()][..]));
    let both = format!("servers = [\"http://b:2\"]\n{EXAMPLE}");
    assert!(Config::parse(&both, no_env).unwrap_err().0.starts_with("servers:"));
    let bad = EXAMPLE.replace("server = \"http://127.0.0.1:3000\"", "servers = [\"http://a:1\", \"ftp://b\"]");
    assert!(Config::parse(&bad, no_env).unwrap_err().0.starts_with("server:"));
}
