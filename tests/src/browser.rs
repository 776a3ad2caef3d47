//! A real browser for the dashboard's tests: headless Chromium driven by
//! chromedriver over the W3C WebDriver protocol (plain HTTP and JSON).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key WebDriver names an element by in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and its chromedriver: `WEIR_TEST_CHROMIUM` and
/// `WEIR_TEST_CHROMEDRIVER`, or `chromium` and `chromedriver` on the PATH
/// (Debian's `chromium` and `chromium-driver` packages). `None` if either is missing.
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |variable: &str, name: &str| {
        let on_path = || {
            let dirs = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&dirs).map(|dir| dir.join(name)).find(|p| p.is_file())
        };
        let path = std::env::var(variable).map(PathBuf::from).ok().or_else(on_path)?;
        let runs = Command::new(&path).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        runs.is_ok_and(|s| s.success()).then_some(path)
    };
    Some((find("WEIR_TEST_CHROMIUM", "chromium")?, find("WEIR_TEST_CHROMEDRIVER", "chromedriver")?))
}

/// A browser session; the driver (and its browser) stop when it is dropped.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ends with its driver; a driver that already ended is fine.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium
    /// with a laptop-sized window (1366×900) and a fresh profile.
    pub async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = crate::free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = client.get(format!("{base}/status")).send().await;
            if let Ok(answer) = ready
                && let Ok(status) = answer.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a browser profile folder");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,900", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Browser { driver, session: base.clone(), client, _profile: profile };
        let answer = browser.command("POST", "/session", capabilities).await;
        let id = answer["sessionId"].as_str().expect("a WebDriver session id").to_owned();
        browser.session = format!("{base}/session/{id}");
        browser
    }

    /// One WebDriver command (`path` under the session); its `value`. Panics with
    /// the driver's error message if it answers one.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.client.get(&url),
            "DELETE" => self.client.delete(&url),
            _ => self.client.post(&url).json(&body),
        };
        let answer: Value = request.send().await.expect("the WebDriver request").json().await.expect("a JSON answer");
        let value = answer["value"].clone();
        assert!(value.get("error").is_none(), "WebDriver {method} {path}: {value}");
        value
    }

    /// Opens `url`.
    pub async fn open(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url})).await;
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`) and returns its result.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.command("POST", "/execute/sync", json!({"script": script, "args": args})).await
    }

    /// The text of every element `css` matches, as the page has it.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .run("return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent);", json!([css]))
            .await;
        found.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }

    /// The text of the first element `css` matches, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        self.texts(css).await.into_iter().next()
    }

    /// Whether the element `css` matches is shown (not hidden, with a size).
    pub async fn visible(&self, css: &str) -> bool {
        let shown = self
            .run(
                "const e = document.querySelector(arguments[0]); \
                 return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;",
                json!([css]),
            )
            .await;
        shown == true
    }

    async fn element(&self, css: &str) -> String {
        let found = self.command("POST", "/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element `{css}`: {found}")).to_owned()
    }

    /// Clicks the element `css` matches, as a user does (the driver moves the pointer there).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/click"), json!({})).await;
    }

    /// Types `text` into the field `css` matches, as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/clear"), json!({})).await;
        self.command("POST", &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    /// A PNG of the window as it is now.
    pub async fn screenshot(&self) -> Vec<u8> {
        let png = self.command("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64 PNG")).expect("a PNG")
    }

    /// Ends the session (closing the browser) and the driver.
    pub async fn quit(self) {
        self.command("DELETE", "", Value::Null).await;
    }
}

/// Waits until `check` returns something, trying every 100 ms for up to
/// `timeout`; panics naming `what` if it never does.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
