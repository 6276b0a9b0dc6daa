//! The example app in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver) by `fantoccini`, logs in through the form,
//! sees the account page, takes a screenshot of it, and logs out.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them when missing); fails with a message naming what is missing. Set
//! `SCREENSHOT=path.png` to keep the screenshot (the README's is made so).

mod app_server;
#[allow(dead_code)]
#[path = "../examples/app/routes.rs"]
mod routes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};

/// The first of `candidates` that exists, else a panic naming the package.
fn binary(env: &str, candidates: &[&str], package: &str) -> PathBuf {
    let from_env = std::env::var_os(env).map(PathBuf::from);
    from_env
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found (looked at ${env} and {candidates:?}): install Debian's \
                 `{package}` package (apt-get install chromium chromium-driver); \
                 .ci/run does this",
                candidates[0]
            )
        })
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let exe = binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
            "chromium-driver",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clicks the button `button` and waits (10 s at most) for the page at
/// `url`.
async fn submit(
    browser: &fantoccini::Client,
    button: &str,
    url: &str,
) -> Result<(), fantoccini::error::CmdError> {
    browser.find(Locator::Css(button)).await?.click().await?;
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_url(&url.parse().unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_see_the_account_page_and_log_out_in_chromium() {
    let chromium = binary(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "chromium",
    );
    let driver = Driver::start();
    let addr = app_server::serve(redis_layers::Backend::Memory(
        redis_layers::memory::MemoryBackend::new(),
    ))
    .await;
    let profile = tempfile::tempdir().unwrap();

    // Headless, and quiet on a machine without internet.
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=900,600",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver");
    let base = format!("http://{addr}");

    let result = async {
        // Log in through the form.
        browser.goto(&format!("{base}/login")).await?;
        let form = browser.form(Locator::Id("login")).await?;
        form.set_by_name("user", "alice").await?;
        form.set_by_name("password", "wonderland").await?;
        submit(&browser, "form#login button", &format!("{base}/account")).await?;

        // The account page lists this session, as the browser it is.
        let heading = browser.find(Locator::Css("h1")).await?.text().await?;
        assert_eq!(heading, "Sessions of alice");
        let table = browser.find(Locator::Id("sessions")).await?.text().await?;
        assert!(table.contains("this session"), "{table}");
        assert!(table.contains("HeadlessChrome"), "the user agent: {table}");
        let png = browser.screenshot().await?;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
        assert!(png.len() > 5_000, "a screenshot of a page, not a blank");
        let path = std::env::var_os("SCREENSHOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("redis-layers-account.png"));
        std::fs::write(&path, &png).unwrap();
        assert!(Path::new(&path).exists());

        // Log out: back home, not logged in, and the account page is gone.
        submit(&browser, "form#logout button", &format!("{base}/")).await?;
        let body = browser.find(Locator::Css("main")).await?.text().await?;
        assert!(body.contains("Not logged in"), "{body}");
        // The logout's flash message, shown once; the browser's own
        // Sec-Fetch-Site passed the CSRF layer on every form.
        assert!(body.contains("You are logged out."), "{body}");
        browser.goto(&format!("{base}/")).await?;
        let body = browser.find(Locator::Css("main")).await?.text().await?;
        assert!(!body.contains("logged out"), "{body}");
        browser.goto(&format!("{base}/account")).await?;
        assert_eq!(
            browser.current_url().await?.as_str(),
            format!("{base}/login")
        );
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    // Close the browser even when a step failed.
    let _ = browser.close().await;
    drop(driver);
    result.expect("the browser walk");
}
