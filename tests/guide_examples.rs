//! The API guide (`docs/api-guide.zh.md`) is the first acceptance test: its
//! HTTP, cURL, Python and Node examples run against a real gateway, unchanged
//! but for the key and the port.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{Stack, expect_data};

const GUIDE: &str = include_str!("../docs/api-guide.zh.md");

/// The code blocks of the guide tagged with `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in GUIDE.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(String::new()),
            (Some(block), Some(_)) => {
                out.push(std::mem::take(block));
                current = None;
            }
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

fn localize(code: &str, stack: &Stack, key: &str) -> String {
    code.replace("http://localhost:18789", &stack.url(""))
        .replace("YOUR_API_KEY", key)
}

/// One `METHOD path` + JSON body request of the guide's `http` blocks.
struct HttpExample {
    method: String,
    path: String,
    body: Option<Value>,
}

fn http_examples() -> Vec<HttpExample> {
    blocks("http")
        .iter()
        .filter_map(|block| {
            let first = block.lines().next()?;
            let (method, path) = first.split_once(' ')?;
            if !path.starts_with('/') {
                return None; // the headers-only block
            }
            // The body follows the blank line after the headers.
            let body = block
                .split_once("\n\n")
                .map(|(_, body)| body.trim())
                .filter(|body| !body.is_empty())
                .map(|body| serde_json::from_str(body).expect("guide JSON"));
            Some(HttpExample {
                method: method.to_string(),
                path: path.trim().to_string(),
                body,
            })
        })
        .collect()
}

#[tokio::test]
async fn the_guide_session_examples_work_as_written() {
    let stack = Stack::start().await;
    let key = stack.create_key("guide").await;
    let examples = http_examples();
    let create = examples
        .iter()
        .find(|e| e.method == "POST" && e.path == "/api/v1/sessions")
        .expect("the guide creates a session");
    // The guide's create request names a session id to continue; it is new here, so it is created.
    let response = stack
        .post(
            &create.path,
            &key,
            create.body.as_ref().expect("create body"),
        )
        .await;
    let data = expect_data(response, 201).await;
    assert_eq!(data["sessionId"], "optional-session-id");
    assert_eq!(data["status"], "active");
    assert!(data["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(data["message"]["role"], "assistant");
    assert_eq!(data["message"]["content"], "echo: Hello");
    assert_eq!(data["usage"]["promptTokens"], 10);
    assert_eq!(data["usage"]["completionTokens"], 5);

    let send = examples
        .iter()
        .find(|e| e.path.ends_with("/messages"))
        .expect("the guide sends a message");
    let path = send.path.replace("{sessionId}", "optional-session-id");
    let response = stack
        .post(&path, &key, send.body.as_ref().expect("send body"))
        .await;
    let data = expect_data(response, 200).await;
    assert_eq!(
        data["message"],
        json!({"role": "assistant", "content": "echo: Your message here"})
    );
    assert_eq!(data["usage"]["promptTokens"], 10);
    assert_eq!(data["usage"]["completionTokens"], 5);

    let status = examples
        .iter()
        .find(|e| e.path == "/api/v1/system/status")
        .expect("the guide reads the status");
    let response = stack.get(&status.path, &key).await;
    let data = expect_data(response, 200).await;
    assert_eq!(data["gateway"], "running");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert!(data["uptime"].as_str().unwrap().ends_with('s'));
    for field in ["tokenUsage", "contextUsage", "queueDepth"] {
        assert!(
            data["resources"][field].is_u64(),
            "resources.{field} is an integer: {data}"
        );
    }
}

#[tokio::test]
async fn the_guide_request_body_with_system_prompt_and_options_works() {
    let stack = Stack::start().await;
    let key = stack.create_key("guide").await;
    let body_block = blocks("json")
        .into_iter()
        .find(|b| b.contains("\"temperature\""))
        .expect("the guide's body example");
    let body: Value = serde_json::from_str(&body_block).unwrap();
    let response = stack
        .http
        .post(stack.url("/api/v1/sessions"))
        .bearer_auth(&key)
        .header("OpenClaw-Version", "1.0")
        .header("X-Request-ID", "unique-request-id")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "unique-request-id");
    assert_eq!(response.headers()["openclaw-version"], "1.0");
    expect_data(response, 201).await;
    let sent = &stack.upstream.received()[0];
    assert_eq!(
        sent["model"], "glm-4.7-flash",
        "the upstream model is the part after zai/"
    );
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are a helpful assistant"})
    );
    assert_eq!(sent["max_tokens"], 1000);
    assert!((sent["temperature"].as_f64().unwrap() - 0.7).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_curl_examples_run_unchanged() {
    let stack = Stack::start().await;
    let key = stack.create_key("curl").await;
    let script = localize(&blocks("bash")[0], &stack, &key);
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash and curl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("cURL printed JSON envelopes");
    assert_eq!(documents.len(), 2, "{stdout}");
    assert_eq!(documents[0]["success"], true);
    assert_eq!(documents[0]["data"]["message"]["content"], "echo: Hello");
    assert_eq!(documents[1]["data"]["gateway"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_python_example_runs_unchanged() {
    let stack = Stack::start().await;
    let key = stack.create_key("python").await;
    let script = localize(&blocks("python")[0], &stack, &key);
    let output = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 with requests");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("the example prints JSON");
    assert_eq!(result["success"], true);
    assert_eq!(result["data"]["status"], "active");
    assert!(
        result["data"]["sessionId"]
            .as_str()
            .unwrap()
            .starts_with("sess_")
    );
    assert_eq!(result["data"]["message"]["content"], "echo: Hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_node_example_runs_unchanged() {
    let stack = Stack::start().await;
    let key = stack.create_key("node").await;
    let script = localize(&blocks("javascript")[0], &stack, &key);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guide");
    let modules = dir.join("node_modules");
    if !modules.join("axios").exists() {
        // The example `require`s axios: install the pinned version once, from the lock file.
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .status()
            .expect("npm (Node.js) is needed to run the guide's Node example");
        assert!(status.success(), "npm ci --prefix tests/guide failed");
    }
    let output = Command::new("node")
        .arg("-e")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("success: true"), "{printed}");
    assert!(printed.contains("sessionId: 'sess_"), "{printed}");
    assert!(printed.contains("echo: Hello"), "{printed}");
}

#[tokio::test]
async fn the_guide_cron_examples_work_as_written() {
    let stack = Stack::start().await;
    let key = stack.create_key("guide-cron").await;
    let examples = http_examples();
    // 2.3: create the job with the guide's body, unchanged.
    let create = examples
        .iter()
        .find(|e| e.method == "POST" && e.path == "/api/v1/cron/jobs")
        .expect("the guide creates a cron job");
    let response = stack
        .post(
            &create.path,
            &key,
            create.body.as_ref().expect("create body"),
        )
        .await;
    let created = expect_data(response, 201).await;
    assert_eq!(created["name"], "daily-backup");
    assert_eq!(created["schedule"]["kind"], "every");
    assert_eq!(created["schedule"]["everyMs"], 86_400_000);
    assert_eq!(
        created["payload"],
        json!({"kind": "systemEvent", "text": "Running daily backup"})
    );

    // 2.4: the list has the guide's shape: every field of its example, of the same JSON type.
    let list = examples
        .iter()
        .find(|e| e.method == "GET" && e.path == "/api/v1/cron/jobs")
        .expect("the guide lists cron jobs");
    let response = stack.get(&list.path, &key).await;
    let data = expect_data(response, 200).await;
    let example: Value = blocks("json")
        .iter()
        .find(|b| b.contains("\"jobs\""))
        .map(|b| serde_json::from_str(b).expect("guide JSON"))
        .expect("the guide's list response");
    let shown = &example["jobs"][0];
    let job = &data["jobs"][0];
    assert_eq!(data["jobs"].as_array().map(Vec::len), Some(1));
    for (field, value) in shown.as_object().unwrap() {
        let same_type = match value {
            Value::String(_) => job[field].is_string(),
            Value::Number(_) => job[field].is_number(),
            _ => true,
        };
        assert!(same_type, "field '{field}' as in the guide: {job}");
    }
    assert_eq!(job["id"], created["id"]);
    assert_eq!(job["name"], "daily-backup");
    assert_eq!(job["status"], "enabled");
    let next = job["nextRun"].as_str().unwrap();
    assert_eq!(next.len(), "2026-02-15T00:00:00Z".len(), "{next}");
    assert!(next.ends_with('Z'));
    let next = chrono::DateTime::parse_from_rfc3339(next).unwrap();
    let in_a_day = chrono::Utc::now() + chrono::Duration::milliseconds(86_400_000);
    assert!((next.signed_duration_since(in_a_day)).num_seconds().abs() <= 5);
}
