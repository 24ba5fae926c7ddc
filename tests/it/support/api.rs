//! A small REST client for the operators' API, a reader of its Server-Sent Events, and a parser of
//! its Prometheus text.

use std::collections::BTreeMap;

use opampd::collector::CollectorId;
use serde_json::Value;

use super::{eventually, http_client, within};

pub struct Api {
    pub base: String,
    pub key: Option<String>,
    /// Set for a server whose API speaks TLS: a client trusting its CA.
    pub client: Option<reqwest::Client>,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

/// Servers' generated admin keys by API base URL, so that every test's client can write.
static GENERATED_KEYS: std::sync::Mutex<BTreeMap<String, String>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A server's entry among the generated keys, for as long as the server holds its address.
/// Ports are reused within a run: a key left behind would be presented to whatever listens there
/// next (another test's server, or a proxy), which refuses it.
pub struct KnownKey {
    base: String,
    key: Option<String>,
}

impl Drop for KnownKey {
    fn drop(&mut self) {
        let mut keys = GENERATED_KEYS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only its own: a newer server at the same address may have registered since.
        if self.key.is_some() && keys.get(&self.base) == self.key.as_ref() {
            keys.remove(&self.base);
        }
    }
}

/// Notes the admin key `data_dir` holds (if the server generated one) for the server at `base`,
/// until the returned entry is dropped with the server.
pub fn remember_generated_key(base: &str, data_dir: &std::path::Path) -> KnownKey {
    let file = data_dir.join(opampd::api::keyfile::FILE);
    let key = std::fs::read_to_string(file)
        .ok()
        .map(|key| key.trim().to_owned());
    let mut keys = GENERATED_KEYS.lock().unwrap();
    match &key {
        Some(key) => keys.insert(base.to_owned(), key.clone()),
        None => keys.remove(base),
    };
    KnownKey {
        base: base.to_owned(),
        key,
    }
}

/// The admin key the server at `base` generated, if it did.
pub fn generated_key(base: &str) -> Option<String> {
    GENERATED_KEYS.lock().unwrap().get(base).cloned()
}

impl Api {
    /// A client of the server at `base`, presenting the admin key it generated, if it did (as
    /// an operator would after reading it from the data directory).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            key: generated_key(base),
            client: None,
        }
    }

    /// A client that presents no key.
    pub fn anonymous(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            key: None,
            client: None,
        }
    }

    pub fn with_key(base: &str, key: &str) -> Self {
        Self {
            base: base.to_owned(),
            key: Some(key.to_owned()),
            client: None,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = self.client.clone().unwrap_or_else(http_client);
        let request = client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.header("authorization", format!("Bearer {key}")),
            None => request,
        }
    }

    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("API request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("API body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.with_body(reqwest::Method::PUT, path, body.to_string())
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.with_body(reqwest::Method::PATCH, path, body.to_string())
            .await
    }

    /// POSTs `body` as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.with_body(reqwest::Method::POST, path, body.to_string())
            .await
    }

    /// POSTs `body` as JSON and asserts a success (200, 201 or 202), returning the answer's body.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let answer = self.post(path, body).await;
        assert!(
            (200..=202).contains(&answer.status),
            "POST {path}: {} {}",
            answer.status,
            answer.body
        );
        answer.body
    }

    pub async fn with_body(&self, method: reqwest::Method, path: &str, body: String) -> Answer {
        Self::send(
            self.request(method, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// GETs `path` and asserts a 200, returning the body.
    pub async fn ok(&self, path: &str) -> Value {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        answer.body
    }

    /// Waits until the collector is in the store, and returns it as the API shows it.
    /// Waits until the collector's `field`, as the API shows it, is `expected`.
    pub async fn field_becomes(&self, id: CollectorId, field: &str, expected: Value) {
        let path = format!("/api/v1/collectors/{id}");
        eventually(&format!("{field} to become {expected}"), || async {
            (self.ok(&path).await[field] == expected).then_some(())
        })
        .await;
    }

    /// The ids of the collectors `GET /api/v1/collectors?{query}` lists on its first page.
    pub async fn listed_ids(&self, query: &str) -> Vec<String> {
        let page = self.ok(&format!("/api/v1/collectors?{query}")).await;
        page["items"]
            .as_array()
            .expect("a page of items")
            .iter()
            .map(|c| c["id"].as_str().expect("an id").to_owned())
            .collect()
    }

    pub async fn stored(&self, id: CollectorId) -> Value {
        let path = format!("/api/v1/collectors/{id}");
        eventually(&format!("collector {id} in the store"), || async {
            let answer = self.get(&path).await;
            (answer.status == 200).then_some(answer.body)
        })
        .await
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Scrape {
        let answer = self.get("/metrics").await;
        assert_eq!(answer.status, 200);
        Scrape::parse(answer.body.as_str().expect("Prometheus text"))
    }

    /// How many times `listener`'s changed TLS files (`ca`: the CA's) were read with `result`.
    pub async fn tls_reloads(&self, listener: &str, result: &str) -> u64 {
        self.metrics()
            .await
            .get(
                "opampd_tls_reloads_total",
                &[("listener", listener), ("result", result)],
            )
            .unwrap_or(0)
    }

    pub async fn events(&self, query: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request = self.request(reqwest::Method::GET, &format!("/api/v1/events{query}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("event stream");
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        EventStream {
            response,
            buffer: String::new(),
        }
    }
}

/// Asserts the API's error shape and code.
pub fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        answer.body
    );
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: String,
    pub event: String,
    pub data: Value,
}

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// The next event (keep-alive comments skipped), within the deadline.
    pub async fn next(&mut self) -> Sse {
        within("an event on the stream", async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (String::new(), String::new(), String::new());
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            v.trim().clone_into(&mut id);
                        } else if let Some(v) = line.strip_prefix("event:") {
                            v.trim().clone_into(&mut event);
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if !event.is_empty() {
                        return Sse {
                            id,
                            event,
                            data: serde_json::from_str(&data).expect("event data is JSON"),
                        };
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .expect("event stream readable")
                    .expect("event stream open");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
    }
}

/// One scrape of `/metrics`: every sample by name and labels.
#[derive(Debug)]
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Reads the sample lines (`name{k="v",...} value`); comments and types are left aside.
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample: series and value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            let value = value.parse().expect("a numeric sample value");
            samples.push((name.to_owned(), labels, value));
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sample with exactly these labels, if there is one, as the count it is (every metric
    /// of ours but the histogram's sum counts something).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| {
                assert!(v.fract() == 0.0 && *v >= 0.0, "{name}: not a count: {v}");
                *v as u64
            })
    }

    /// The sample with exactly these labels; the test fails when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", self.text))
    }

    /// The label sets `name` has samples for.
    pub fn all(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}
