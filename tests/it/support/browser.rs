//! A real browser for the console's tests: Debian's `chromedriver` on a free loopback port,
//! driving headless Chromium; both are ended when the [`Browser`] is dropped.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::http_client;

/// A browser starts slowly on a loaded two-core machine; a passing wait never takes this long.
const BROWSER_DEADLINE: Duration = Duration::from_secs(40);

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// The port chromedriver says it started on, from its standard output, with the lines it said
/// before (to tell why, when it said none); the rest of that output is read on in the
/// background, so that chromedriver never waits on a full pipe.
async fn port_said(stdout: tokio::process::ChildStdout) -> Result<u16, Vec<String>> {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut said = Vec::new();
    let port = tokio::time::timeout(BROWSER_DEADLINE, async {
        while let Some(line) = lines.next_line().await.ok()? {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                return rest.trim_end_matches('.').parse().ok();
            }
            said.push(line);
        }
        None
    })
    .await;
    match port.ok().flatten() {
        Some(port) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(port)
        }
        None => Err(said),
    }
}

/// Starts chromedriver on a port of the kernel's choice. A chromedriver that ends without
/// saying its port (on a loaded machine, now and then) is started again, twice at most.
async fn chromedriver() -> (tokio::process::Child, u16) {
    let mut told = Vec::new();
    for _ in 0..3 {
        // Its own process group, so that dropping it ends Chromium too (chromedriver's child).
        // Port 0: chromedriver binds a port of the kernel's choice and says which. (A port found
        // free first and handed to it could be taken by another test's server in between.)
        let mut driver = tokio::process::Command::new("chromedriver")
            .arg("--port=0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; .ci/run installs it)");
        match port_said(driver.stdout.take().expect("chromedriver's stdout")).await {
            Ok(port) => return (driver, port),
            Err(said) => told = said,
        }
    }
    panic!("chromedriver never said which port it listens on; it said {told:?}");
}

impl Browser {
    pub async fn start() -> Self {
        let (driver, port) = chromedriver().await;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until("chromedriver answers", || async {
            let answer = http_client().get(&status).send().await.ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                    "--disable-dev-shm-usage", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session");
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element `css` selects, once there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the first element `css` selects reads `expected`.
    pub async fn wait_text(&self, css: &str, expected: &str) {
        wait_until(&format!("{css} reads {expected:?}"), || async {
            (self.text(css).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
    }

    /// Waits until the first element `css` selects holds the text `expected`, shown or not (a
    /// table in a closed `<details>`, a chart's title).
    pub async fn wait_content(&self, css: &str, expected: &str) {
        wait_until(&format!("{css} holds {expected:?}"), || async {
            let text = self
                .client
                .execute(
                    "return document.querySelector(arguments[0])?.textContent ?? null",
                    vec![serde_json::json!(css)],
                )
                .await
                .ok()?;
            (text.as_str() == Some(expected)).then_some(())
        })
        .await;
    }

    /// Runs `script` in the page (without arguments) and gives back what it returns (a promise's
    /// value, once it settles).
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `css` selects something.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        wait_until(&format!("{css} is shown"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// How many elements `css` selects now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |all| all.len())
    }

    pub async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.unwrap();
    }

    /// Replaces the value of the input `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.wait_for(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Enters `key` in the key form (which must be open or about to open).
    pub async fn enter_key(&self, key: &str) {
        self.type_into("#key-input", key).await;
        self.click("#key-submit").await;
    }

    /// Opens the key form and enters the admin key the server at `api_url` generated.
    pub async fn enter_generated_key(&self, api_url: &str) {
        self.click("#key-button").await;
        let key = super::api::generated_key(api_url).expect("the generated admin key");
        self.enter_key(&key).await;
    }

    /// Writes what the browser shows to `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed test the session was not closed: the whole group goes, Chromium too.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .status();
        }
    }
}

/// Polls `probe` until it yields `Some`, failing the test with `what` at the browser deadline.
pub async fn wait_until<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    super::eventually_within(BROWSER_DEADLINE, Duration::from_millis(50), what, probe).await
}
