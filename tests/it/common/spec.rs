//! The contract's documents as test oracles: every HTTP response is checked against
//! `/openapi.json` ([`Spec`]), every socket frame against `ServerFrame` of `/asyncapi.json`
//! ([`FrameSchema`]). A response or frame the documents do not describe fails the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub struct Spec {
    pub doc: Value,
    prefixes: Vec<String>,
    templates: Vec<(String, Vec<String>)>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Spec {
    pub(super) async fn fetch(base: &str) -> Spec {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json");
        assert_eq!(resp.status().as_u16(), 200, "GET /openapi.json status");
        let doc: Value = resp.json().await.expect("/openapi.json is JSON");
        Spec::new(doc)
    }

    pub fn new(doc: Value) -> Spec {
        let templates = doc["paths"]
            .as_object()
            .expect("openapi.json has paths")
            .keys()
            .map(|p| (p.clone(), segments(p)))
            .collect();
        let prefixes = doc["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["url"].as_str())
            .filter(|u| u.starts_with('/') && *u != "/")
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Spec {
            doc,
            prefixes,
            templates,
            validators: Mutex::default(),
        }
    }

    /// The best matching path template (most literal segments) for a concrete path.
    fn match_path(&self, path: &str) -> Option<&str> {
        let mut candidates = vec![path.to_string()];
        for p in &self.prefixes {
            if let Some(rest) = path.strip_prefix(p.as_str()) {
                candidates.push(rest.to_string());
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for cand in &candidates {
            let segs = segments(cand);
            for (tpl, tsegs) in &self.templates {
                if tsegs.len() != segs.len() {
                    continue;
                }
                let mut literal = 0;
                let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                    if t.starts_with('{') && t.ends_with('}') {
                        !s.is_empty()
                    } else if t == s {
                        literal += 1;
                        true
                    } else {
                        false
                    }
                });
                if ok && best.is_none_or(|(_, l)| literal > l) {
                    best = Some((tpl, literal));
                }
            }
        }
        best.map(|(t, _)| t)
    }

    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut cur = v;
        for _ in 0..8 {
            match cur.get("$ref").and_then(Value::as_str) {
                Some(r) if r.starts_with("#/") => match self.doc.pointer(&r[1..]) {
                    Some(t) => cur = t,
                    None => panic!("openapi.json: dangling $ref {r}"),
                },
                _ => break,
            }
        }
        cur
    }

    /// Panics when the response is not documented or does not match its documented schema.
    /// An undocumented path may only answer 404 and an undocumented method 405 (or 404), except
    /// for the routes of [`UNDOCUMENTED`].
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, text: &str) {
        let path = path.split('?').next().unwrap_or(path);
        if UNDOCUMENTED.iter().any(|(p, _)| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *p,
        }) {
            return;
        }
        let Some(template) = self.match_path(path) else {
            assert_eq!(
                status, 404,
                "OpenAPI: {method} {path} is not a documented path, yet it answered {status}: {text}"
            );
            return;
        };
        let Some(op) = self.doc["paths"][template].get(method.to_ascii_lowercase()) else {
            assert!(
                status == 405 || status == 404,
                "OpenAPI: {method} is not documented for {template}, yet {method} {path} \
                 answered {status}: {text}"
            );
            return;
        };
        let responses = &op["responses"];
        let code = status.to_string();
        let range = format!("{}XX", status / 100);
        let (key, resp) = [code.as_str(), range.as_str(), "default"]
            .into_iter()
            .find_map(|k| responses.get(k).map(|r| (k, r)))
            .unwrap_or_else(|| {
                panic!(
                    "OpenAPI: {method} {path} (operation {template}) answered undocumented status \
                     {status}; documented: {:?}; body: {text}",
                    responses
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                )
            });
        if text.trim().is_empty() {
            return;
        }
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !ct.contains("json") {
            return;
        }
        let content = &self.deref(resp)["content"];
        let media = content.get(&ct).or_else(|| {
            content
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.contains("json")).map(|(_, v)| v))
        });
        let Some(schema) = media.and_then(|m| m.get("schema")) else {
            return;
        };
        let cache_key = format!("{method} {template} {key} {ct}");
        let validator = {
            let mut cache = self.validators.lock().unwrap();
            cache
                .entry(cache_key)
                .or_insert_with(|| {
                    let root = json!({
                        "allOf": [schema],
                        "components": self.doc.get("components").cloned().unwrap_or(json!({})),
                    });
                    Arc::new(
                        jsonschema::options()
                            .with_draft(jsonschema::Draft::Draft202012)
                            .build(&root)
                            .unwrap_or_else(|e| {
                                panic!("OpenAPI schema for {method} {template} {key}: {e}")
                            }),
                    )
                })
                .clone()
        };
        let body: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!("{method} {path} -> {status}: content type {ct} but invalid JSON ({e}): {text}")
        });
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{e} (at {})", e.instance_path))
            .collect();
        if !errors.is_empty() {
            panic!(
                "OpenAPI: {method} {path} -> {status} does not match the schema of {template} \
                 [{key}]:\n  {}\nbody: {text}",
                errors.join("\n  ")
            );
        }
    }
}

/// Routes `/openapi.json` leaves out on purpose, and where each is described instead.
pub const UNDOCUMENTED: &[(&str, &str)] = &[
    ("/openapi.json", "the OpenAPI document itself"),
    (
        "/asyncapi.json",
        "the AsyncAPI document of the socket protocol",
    ),
    ("/realtime", "the WebSocket endpoint: /asyncapi.json"),
    (
        "/realtime/sse*",
        "the SSE stream and its client messages: the messages of /asyncapi.json",
    ),
    ("/metrics", "Prometheus text: docs/deployment.md"),
    ("/", "the live board's page: web/"),
    ("/board.css", "the live board: web/"),
    ("/assets/*", "the live board's scripts: web/assets"),
];

fn segments(p: &str) -> Vec<String> {
    p.trim_matches('/').split('/').map(str::to_string).collect()
}

/// Validator of server frames built from `/asyncapi.json`.
pub struct FrameSchema {
    validator: jsonschema::Validator,
}

impl FrameSchema {
    pub(super) async fn fetch(base: &str) -> FrameSchema {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}/asyncapi.json"))
            .send()
            .await
            .expect("GET /asyncapi.json");
        // Without the document no frame could be checked: that fails the test.
        assert_eq!(resp.status().as_u16(), 200, "GET /asyncapi.json status");
        let doc: Value = resp.json().await.expect("/asyncapi.json is JSON");
        FrameSchema::new(&doc)
    }

    pub fn new(doc: &Value) -> FrameSchema {
        assert!(
            doc["asyncapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "/asyncapi.json: expected an AsyncAPI 3.x document, got asyncapi = {}",
            doc["asyncapi"]
        );
        let components = doc.get("components").cloned().unwrap_or(json!({}));
        assert!(
            components["schemas"]["ServerFrame"].is_object(),
            "/asyncapi.json has no components.schemas.ServerFrame"
        );
        let root = json!({
            "allOf": [{"$ref": "#/components/schemas/ServerFrame"}],
            "components": components,
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("/asyncapi.json ServerFrame schema does not compile: {e}"));
        FrameSchema { validator }
    }

    /// The validation errors of `frame` against `ServerFrame`.
    pub fn errors(&self, frame: &Value) -> Vec<String> {
        self.validator
            .iter_errors(frame)
            .map(|e| format!("{e} (at {})", e.instance_path))
            .collect()
    }

    /// Panics when `frame` does not match `ServerFrame`.
    #[track_caller]
    pub fn check(&self, frame: &Value) {
        let errors = self.errors(frame);
        if !errors.is_empty() {
            panic!(
                "AsyncAPI: server frame does not match ServerFrame:\n  {}\nframe: {frame}",
                errors.join("\n  ")
            );
        }
    }
}
