//! S3 servers of a test's own: a moto process per "region" on a free port
//! (`IMPRINT_TEST_MOTO_SERVER`, exported by `./dev s3-start` / `./dev test`), so a test can
//! stop one of them or spoil an object in it (docs/regions.md).
use crate::http::eventually;
use imprint_service::objects::Objects;

/// The bucket every test moto holds.
pub const MOTO_BUCKET: &str = "imprint-regions";

/// A moto process on a free port, stopped (killed) when dropped.
pub struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    /// Starts one with the bucket made; `None` (the test skips) when
    /// `IMPRINT_TEST_MOTO_SERVER` is unset, which CI refuses.
    pub async fn start() -> Option<Moto> {
        Moto::start_on(None).await
    }

    /// As `start`, on `port` when given (a region back after an outage).
    pub async fn start_on(port: Option<u16>) -> Option<Moto> {
        let Ok(bin) = std::env::var("IMPRINT_TEST_MOTO_SERVER") else {
            assert!(std::env::var("CI").is_err(), "CI runs the regions tests: IMPRINT_TEST_MOTO_SERVER is not set");
            eprintln!("IMPRINT_TEST_MOTO_SERVER is not set: skipping (eval \"$(./dev s3-start)\" to run it)");
            return None;
        };
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
        });
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto starts");
        let m = Moto { child, port };
        let http = reqwest::Client::new();
        let url = format!("{}/{MOTO_BUCKET}", m.endpoint());
        eventually("moto answers and makes the bucket", || async {
            http.put(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        Some(m)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The region is down: the process is killed.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A store on this moto under `prefix`, failing fast when it is stopped.
    pub fn objects(&self, prefix: &str) -> Objects {
        let options: Vec<(String, String)> = [
            ("aws_endpoint", self.endpoint().as_str()),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
            // A stopped region fails fast instead of after the default retries.
            ("retry_timeout_secs", "1"),
            ("max_retries", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Objects::open(&format!("s3://{MOTO_BUCKET}/{prefix}"), &options, false).expect("S3 store")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server configuration of two regions: `eu` (the home, on `eu`) and `us` (on `us`),
/// consumers sent to their own region first, then eu, then us.
pub fn two_regions(eu: &Moto, us: &Moto) -> (Objects, imprint_service::regions::Regions) {
    use imprint_service::regions::{Region, Regions};
    let others = vec![Region { name: "us".into(), objects: us.objects("us") }];
    let regions = Regions::new("eu".into(), others, &["eu".to_owned(), "us".to_owned()]).expect("regions");
    (eu.objects("eu"), regions)
}
