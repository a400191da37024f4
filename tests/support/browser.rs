//! A headless Chromium driven through chromedriver (WebDriver), for the dashboard's browser tests.
//!
//! Teardown is gentle and targeted: the WebDriver session is closed (chromedriver ends Chromium),
//! then chromedriver gets SIGTERM; a Chromium left behind by a panicking test is found by its
//! unique profile directory and only that one is stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};

/// Where screenshots go: `$BERTH_ARTIFACTS/screenshots`, else `target/artifacts/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    std::env::var("BERTH_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::workspace_root().join("target").join("artifacts"))
        .join("screenshots")
}

pub struct Browser {
    pub client: Option<Client>,
    chromedriver: Child,
    profile: PathBuf,
    shots: PathBuf,
    prefix: String,
    /// See [`crate::network_changes`].
    _network: tokio::sync::MutexGuard<'static, ()>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile under `scratch`;
    /// screenshots are named `<prefix>-<name>.png`.
    pub async fn start(scratch: &Path, prefix: &str) -> anyhow::Result<Browser> {
        let network = crate::network_changes().await;
        let port = free_port()?;
        let log = std::fs::File::create(scratch.join(format!("chromedriver-{prefix}.log")))?;
        let chromedriver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting chromedriver (apt-get install chromium chromium-driver; .ci/run does)")?;
        let profile = scratch.join(format!("chromium-{prefix}"));
        std::fs::create_dir_all(&profile)?;
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots)?;
        let mut browser =
            Browser { client: None, chromedriver, profile, shots, prefix: prefix.to_string(), _network: network };

        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-breakpad", "--disable-crash-reporter",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(connector.clone()).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    pause(Duration::from_millis(200)).await;
                    let _ = error;
                }
                Err(error) => bail!("chromedriver did not start a session: {error}"),
            }
        };
        browser.client = Some(client);
        Ok(browser)
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("BUG: the browser is open until close()")
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client().goto(url).await.with_context(|| format!("opening {url}"))
    }

    /// Waits until the page's wasm has taken over (the hydrate entry point marks the body).
    pub async fn wait_hydrated(&self) -> anyhow::Result<()> {
        self.wait_for("body[data-hydrated]").await.map(|_| ())
    }

    /// The first element matching `css`, waiting up to 30 s for it.
    pub async fn wait_for(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(element) = self.client().find(Locator::Css(css)).await {
                return Ok(element);
            }
            if Instant::now() > deadline {
                let url = self.client().current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let _ = self.screenshot(&format!("timeout-{}", sanitize(css))).await;
                bail!("no element matches {css:?} on {url} after 30 s");
            }
            pause(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of the first element matching `css` contains `want`; returns it.
    pub async fn wait_text(&self, css: &str, want: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client().find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(want) {
                    return Ok(text);
                }
                last = text;
            }
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("timeout-{}", sanitize(css))).await;
                bail!("{css:?} never contained {want:?}; last text: {last:?}");
            }
            pause(Duration::from_millis(100)).await;
        }
    }

    /// Sets an input's value the way typing does (an `input` event), replacing what was there.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        self.wait_for(css).await?;
        let script = "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
                      e.dispatchEvent(new Event('input', { bubbles: true })); \
                      e.dispatchEvent(new Event('change', { bubbles: true }));";
        self.client().execute(script, vec![css.into(), value.into()]).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.wait_for(css).await?.click().await.with_context(|| format!("clicking {css}"))?;
        Ok(())
    }

    pub async fn path(&self) -> anyhow::Result<String> {
        let url = self.client().current_url().await?;
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        })
    }

    /// Saves a screenshot of the viewport as `<prefix>-<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client().screenshot().await?;
        let path = self.shots.join(format!("{}-{name}.png", self.prefix));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(client) = self.client.take() {
            client.close().await?;
        }
        Ok(())
    }
}

fn sanitize(css: &str) -> String {
    css.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The pause between two polls of the page.
async fn pause(duration: Duration) {
    tokio::time::sleep(duration).await;
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM to chromedriver alone; it ends its Chromium.
        let _ = crate::terminate(self.chromedriver.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.chromedriver.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
        // A Chromium whose session was never closed (the test panicked): only the one using this
        // test's own profile directory.
        let _ =
            Command::new("pkill").args(["-TERM", "-f", &format!("user-data-dir={}", self.profile.display())]).status();
    }
}
