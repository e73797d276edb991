//! The OpenClaw Dashboard: signing in, Settings → API Keys → Generate New Key, limits, revocation,
//! and the security model (cookie flags, CSP, CSRF, brute force, no cookie on the JSON API).
//! Browser tests drive a real headless Chromium through `chromedriver`.

mod support;

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A reqwest client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("HTTP client")
}

/// Signs in through the form; returns the cookie pair (`name=value`) and the raw Set-Cookie.
async fn sign_in(stack: &Stack, credential: &str, extra: &[(&str, &str)]) -> (String, String) {
    sign_in_at(&stack.url(""), credential, extra).await
}

/// Signs in through the form of the edge at `base`.
async fn sign_in_at(base: &str, credential: &str, extra: &[(&str, &str)]) -> (String, String) {
    let mut request = http()
        .post(format!("{base}/dashboard/login"))
        .form(&[("credential", credential)]);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("sign in");
    assert_eq!(
        response.status(),
        303,
        "signing in redirects to the dashboard"
    );
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    let pair = set_cookie.split(';').next().unwrap_or_default().to_string();
    (pair, set_cookie)
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("data-csrf=\"")
        .expect("the page carries its CSRF token")
        + 11;
    html[at..].split('"').next().unwrap_or_default().to_string()
}

async fn key_id(stack: &Stack, name: &str) -> String {
    let keys = expect_data(
        stack
            .http
            .get(stack.url("/api/v1/keys"))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .expect("list keys"),
        200,
    )
    .await;
    keys.as_array()
        .or_else(|| keys["keys"].as_array())
        .and_then(|keys| keys.iter().find(|k| k["name"] == name))
        .and_then(|k| k["id"].as_str())
        .expect("the key is listed")
        .to_string()
}

async fn status_with(stack: &Stack, key: &str) -> u16 {
    stack
        .http
        .get(stack.url("/api/v1/system/status"))
        .bearer_auth(key)
        .send()
        .await
        .expect("status request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_and_pages_carry_a_strict_csp() {
    // Behind a TLS-terminating load balancer on loopback, which says so with X-Forwarded-Proto.
    let stack = Stack::behind_proxy().await;
    let root = http().get(stack.url("/")).send().await.expect("GET /");
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/dashboard");

    let (pair, cookie) = sign_in(&stack, INTERNAL_TOKEN, &[]).await;
    assert!(pair.starts_with("openclaw_dash=ocd_"), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure flag ({cookie})"
    );

    let (tls_pair, tls_cookie) =
        sign_in(&stack, INTERNAL_TOKEN, &[("x-forwarded-proto", "https")]).await;
    assert!(
        tls_pair.starts_with("__Host-openclaw_dash="),
        "{tls_cookie}"
    );
    assert!(tls_cookie.contains("; Secure"), "{tls_cookie}");

    let page = http()
        .get(stack.url("/dashboard/status"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("status page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("Status"));
    for script in html.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src="),
            "inline script: {script}"
        );
    }
    assert!(
        !html.contains(INTERNAL_TOKEN),
        "the token never appears on a page"
    );
}

#[tokio::test]
async fn a_cross_site_post_or_the_cookie_alone_changes_nothing() {
    let stack = Stack::start().await;
    let key = stack.create_key("victim").await;
    let id = key_id(&stack, "victim").await;
    let (pair, _) = sign_in(&stack, INTERNAL_TOKEN, &[]).await;
    let revoke = stack.url(&format!("/dashboard/settings/keys/{id}/revoke"));

    // From another site, even with the right token in the form: refused.
    let html = http()
        .get(stack.url("/dashboard/status"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&html);
    let cross = http()
        .post(&revoke)
        .header("cookie", &pair)
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    // The cookie alone, without the session's CSRF token: refused.
    let bare = http()
        .post(&revoke)
        .header("cookie", &pair)
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 403);
    assert_eq!(status_with(&stack, &key).await, 200, "the key still works");

    // The JSON API never accepts the dashboard cookie, nor the session as a header.
    let session = pair.split_once('=').unwrap().1.to_string();
    let with_cookie = http()
        .get(stack.url("/api/v1/keys"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    expect_error(with_cookie, 401, "UNAUTHORIZED").await;
    let with_header = http()
        .get(stack.url("/api/v1/system/status"))
        .header("x-openclaw-dashboard-session", &session)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    expect_error(with_header, 401, "UNAUTHORIZED").await;
    let openai = http()
        .get(stack.url("/v1/models"))
        .header("cookie", &pair)
        .header("x-openclaw-dashboard-session", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(openai.status(), 401);

    // With the token, from the dashboard itself: revoked.
    let same = http()
        .post(&revoke)
        .header("cookie", &pair)
        .header("origin", stack.url(""))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 303);
    assert_eq!(status_with(&stack, &key).await, 401);
}

#[tokio::test]
async fn repeated_wrong_sign_ins_are_limited_and_the_right_credential_still_signs_in() {
    let stack = Stack::start().await;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let response = http()
            .post(stack.url("/dashboard/login"))
            .form(&[("credential", format!("oc_wrong{i}"))])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    // The right token is no guess: the address's failures do not stand in its way.
    let right = http()
        .post(stack.url("/dashboard/login"))
        .form(&[("credential", INTERNAL_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 303, "signed in");
    // Further guesses from the address are still refused.
    let guess = http()
        .post(stack.url("/dashboard/login"))
        .form(&[("credential", "oc_wrong_again")])
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), 429);
}

#[tokio::test]
async fn a_session_is_seen_by_every_edge_and_signing_out_ends_it_everywhere() {
    let stack = Stack::start().await;
    let other_edge = spawn_edge(&[&stack.core]);
    let other = |path: &str| format!("http://127.0.0.1:{}{path}", other_edge.port);
    let (pair, _) = sign_in(&stack, INTERNAL_TOKEN, &[]).await;
    let page = http()
        .get(other("/dashboard/status"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the other edge knows the session");
    let csrf = csrf_of(&page.text().await.unwrap());
    let out = http()
        .post(stack.url("/dashboard/logout"))
        .header("cookie", &pair)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().contains("Max-Age=0"))
    );
    let after = http()
        .get(other("/dashboard/status"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(after.headers()["location"], "/dashboard/login");
}

// ---------------------------------------------------------------- what ends a session

/// Two cores on one Redis, each behind an edge of its own: two replicas of one deployment.
struct Replicas {
    redis: Process,
    upstream: FakeUpstream,
    dir: tempfile::TempDir,
    cores: Vec<Process>,
    edges: Vec<Process>,
}

impl Replicas {
    async fn start() -> Self {
        let redis = start_redis();
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let options = CoreOptions::shared(&redis, &upstream, dir.path());
        let cores: Vec<Process> = (0..2).map(|_| spawn_core(&options)).collect();
        let edges: Vec<Process> = cores.iter().map(|core| spawn_edge(&[core])).collect();
        for edge in &edges {
            wait_until_ready(edge).await;
        }
        Self {
            redis,
            upstream,
            dir,
            cores,
            edges,
        }
    }

    /// The address of `path` on edge `n`.
    fn url(&self, n: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edges[n].port)
    }

    /// Stops every core and starts it again where its edge expects it, holding `token` as the
    /// internal token: what rotating `OPENCLAW_INTERNAL_TOKEN` on a deployment does.
    async fn restart_cores_with(&mut self, token: &str) {
        let mut options = CoreOptions::shared(&self.redis, &self.upstream, self.dir.path());
        options
            .env
            .push(("OPENCLAW_INTERNAL_TOKEN".into(), token.into()));
        for core in &mut self.cores {
            core.kill();
        }
        for core in &mut self.cores {
            *core = spawn_core_at(&options, core.port);
        }
        for edge in &self.edges {
            wait_until_ready(edge).await;
        }
    }
}

/// What a dashboard page answers for `cookie` through the edge at `url`, once a core answers at
/// all (right after a core restarts, its edge may still be reconnecting): the status, and the
/// redirect target or the page.
async fn page_for(url: &str, cookie: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let started = Instant::now();
    loop {
        let mut request = http().get(url).header("cookie", cookie);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("dashboard page");
        let status = response.status().as_u16();
        if status != 503 || started.elapsed() > Duration::from_secs(20) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = response.text().await.unwrap_or_default();
            return (status, location.unwrap_or(text));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signed_in(page: &(u16, String)) -> bool {
    page.0 == 200
}

fn sent_to_sign_in(page: &(u16, String)) -> bool {
    page.0 == 303 && page.1 == "/dashboard/login"
}

#[tokio::test]
async fn an_operator_session_ends_on_every_replica_once_the_internal_token_changes() {
    let mut replicas = Replicas::start().await;
    let holder = create_key(&http(), &replicas.url(0, ""), "holder", json!({})).await;
    let (operator, _) = sign_in_at(&replicas.url(0, ""), INTERNAL_TOKEN, &[]).await;
    let (key_holder, _) = sign_in_at(&replicas.url(0, ""), &holder, &[]).await;
    for edge in 0..2 {
        let page = page_for(&replicas.url(edge, "/dashboard/status"), &operator, &[]).await;
        assert!(
            signed_in(&page),
            "edge {edge} before the rotation: {page:?}"
        );
    }

    let rotated = "rotated-internal-token-9876543210";
    replicas.restart_cores_with(rotated).await;
    for edge in 0..2 {
        let page = page_for(&replicas.url(edge, "/dashboard/status"), &operator, &[]).await;
        assert!(
            sent_to_sign_in(&page),
            "edge {edge}: a session opened with the old internal token still resolves: {page:?}"
        );
    }
    let page = page_for(&replicas.url(1, "/dashboard/status"), &key_holder, &[]).await;
    assert!(
        signed_in(&page),
        "a key holder's session does not depend on the internal token: {page:?}"
    );
    // The old token no longer signs in; the new one does, and its session is seen everywhere.
    let old = http()
        .post(replicas.url(1, "/dashboard/login"))
        .form(&[("credential", INTERNAL_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let (fresh, _) = sign_in_at(&replicas.url(1, ""), rotated, &[]).await;
    let page = page_for(&replicas.url(0, "/dashboard/status"), &fresh, &[]).await;
    assert!(signed_in(&page), "{page:?}");

    // The old session was ended, not merely refused: going back to the old token (a rolled
    // back deployment) does not bring it back.
    replicas.restart_cores_with(INTERNAL_TOKEN).await;
    for edge in 0..2 {
        let page = page_for(&replicas.url(edge, "/dashboard/status"), &operator, &[]).await;
        assert!(
            sent_to_sign_in(&page),
            "edge {edge}: the ended session came back with the old token: {page:?}"
        );
        let page = page_for(&replicas.url(edge, "/dashboard/status"), &fresh, &[]).await;
        assert!(
            sent_to_sign_in(&page),
            "edge {edge}: a session of the rotated token outlived it: {page:?}"
        );
    }
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_of_that_identity_on_every_replica() {
    let replicas = Replicas::start().await;
    let key = create_key(&http(), &replicas.url(0, ""), "laptop", json!({})).await;
    let other = create_key(&http(), &replicas.url(0, ""), "other", json!({})).await;
    let (desk, _) = sign_in_at(&replicas.url(0, ""), INTERNAL_TOKEN, &[]).await;
    let (phone, _) = sign_in_at(&replicas.url(1, ""), INTERNAL_TOKEN, &[]).await;
    let (holder_a, _) = sign_in_at(&replicas.url(0, ""), &key, &[]).await;
    let (holder_b, _) = sign_in_at(&replicas.url(1, ""), &key, &[]).await;
    let (bystander, _) = sign_in_at(&replicas.url(1, ""), &other, &[]).await;

    // The operator, from the phone, through the second replica: a form with the CSRF token.
    let settings = page_for(&replicas.url(1, "/dashboard/settings"), &phone, &[]).await;
    assert!(signed_in(&settings), "{settings:?}");
    assert!(
        settings
            .1
            .contains("action=\"/dashboard/logout/everywhere\""),
        "Settings offers 'Sign out everywhere'"
    );
    let without_token = http()
        .post(replicas.url(1, "/dashboard/logout/everywhere"))
        .header("cookie", &phone)
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(without_token.status(), 403, "the CSRF token is required");
    assert!(signed_in(
        &page_for(&replicas.url(0, "/dashboard/status"), &desk, &[]).await
    ));
    let out = http()
        .post(replicas.url(1, "/dashboard/logout/everywhere"))
        .header("cookie", &phone)
        .form(&[("csrf", csrf_of(&settings.1).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        out.headers()["location"],
        "/dashboard/login?done=everywhere"
    );
    assert!(
        out.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().contains("Max-Age=0"))
    );
    let notice = http()
        .get(replicas.url(1, "/dashboard/login?done=everywhere"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.contains("has been ended"), "{notice}");
    for edge in 0..2 {
        for (who, cookie) in [("desk", &desk), ("phone", &phone)] {
            let page = page_for(&replicas.url(edge, "/dashboard/status"), cookie, &[]).await;
            assert!(sent_to_sign_in(&page), "edge {edge}, {who}: {page:?}");
        }
        for (who, cookie) in [("key holder", &holder_a), ("other key", &bystander)] {
            let page = page_for(&replicas.url(edge, "/dashboard/status"), cookie, &[]).await;
            assert!(signed_in(&page), "edge {edge}, {who}: {page:?}");
        }
    }
    // Signing in again works at once.
    let (again, _) = sign_in_at(&replicas.url(0, ""), INTERNAL_TOKEN, &[]).await;
    assert!(signed_in(
        &page_for(&replicas.url(1, "/dashboard/status"), &again, &[]).await
    ));

    // A key holder ends its key's sessions, not another key's, nor the operator's.
    let settings = page_for(&replicas.url(0, "/dashboard/settings"), &holder_a, &[]).await;
    let out = http()
        .post(replicas.url(0, "/dashboard/logout/everywhere"))
        .header("cookie", &holder_a)
        .form(&[("csrf", csrf_of(&settings.1).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    for edge in 0..2 {
        for (who, cookie) in [("laptop a", &holder_a), ("laptop b", &holder_b)] {
            let page = page_for(&replicas.url(edge, "/dashboard/status"), cookie, &[]).await;
            assert!(sent_to_sign_in(&page), "edge {edge}, {who}: {page:?}");
        }
        for (who, cookie) in [("operator", &again), ("other key", &bystander)] {
            let page = page_for(&replicas.url(edge, "/dashboard/status"), cookie, &[]).await;
            assert!(signed_in(&page), "edge {edge}, {who}: {page:?}");
        }
    }
    // The key itself still works on the API: only its dashboard sessions ended.
    let status = get_with_key(&http(), replicas.url(1, "/api/v1/system/status"), &key).await;
    assert_eq!(status.status(), 200);
}

#[tokio::test]
async fn x_forwarded_proto_is_believed_only_from_a_trusted_proxy() {
    // No trusted proxies: a client claiming HTTPS over plain HTTP gets the plain cookie, and a
    // plain-named cookie keeps working for it (it cannot make the edge ignore it either).
    let stack = Stack::start().await;
    let (pair, cookie) = sign_in(&stack, INTERNAL_TOKEN, &[("x-forwarded-proto", "https")]).await;
    assert!(pair.starts_with("openclaw_dash="), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    let page = page_for(
        &stack.url("/dashboard/status"),
        &pair,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(signed_in(&page), "{page:?}");
}

#[tokio::test]
async fn over_tls_only_the_host_prefixed_cookie_names_a_session() {
    let stack = Stack::behind_proxy().await;
    let attacker = stack.create_key("attacker").await;
    let tls = [("x-forwarded-proto", "https")];
    let (victim, _) = sign_in(&stack, INTERNAL_TOKEN, &tls).await;
    assert!(victim.starts_with("__Host-openclaw_dash="), "{victim}");
    let victim_id = victim.split_once('=').unwrap().1;
    // The attacker's own session, as a sibling subdomain could plant it: a plain-named cookie
    // (`Domain=` the parent domain), which browsers send before or beside ours.
    let (planted, _) = sign_in(&stack, &attacker, &[]).await;
    assert!(planted.starts_with("openclaw_dash="), "{planted}");
    let status = stack.url("/dashboard/status");

    let page = page_for(&status, &format!("{planted}; {victim}"), &tls).await;
    assert!(signed_in(&page), "{page:?}");
    assert!(
        page.1.contains("Signed in as operator") && !page.1.contains("attacker"),
        "a planted plain-named cookie chose the session over TLS"
    );
    let page = page_for(&status, &planted, &tls).await;
    assert!(
        sent_to_sign_in(&page),
        "over TLS a plain-named cookie alone is no session: {page:?}"
    );
    let page = page_for(&status, &format!("openclaw_dash={victim_id}"), &tls).await;
    assert!(sent_to_sign_in(&page), "{page:?}");
    // Over plain HTTP, where no cookie can be Secure, the plain name still works.
    let page = page_for(&status, &planted, &[]).await;
    assert!(signed_in(&page) && page.1.contains("attacker"), "{page:?}");
}

// ---------------------------------------------------------------- the browser

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends chromedriver and the Chromium it started: they share a process group of their own,
    /// and killing only chromedriver would leave Chromium running (and using CPU) after the test.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A headless Chromium driven through a private `chromedriver`.
async fn browser(width: u32, height: u32) -> Browser {
    let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    assert!(
        std::path::Path::new(CHROMIUM).exists()
            && Command::new(&driver_bin).arg("--version").output().is_ok(),
        "the dashboard's browser tests need Chromium and chromedriver: \
         apt-get install -y chromium chromium-driver (scripts/test.sh installs them)"
    );
    let port = free_port();
    let driver = Command::new(&driver_bin)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().expect("browser profile dir");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !support::listening(port) {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.path().display()),
            ]
    });
    // Headless windows are at least 500 px wide; a phone's width needs device emulation.
    if width < 500 {
        options["mobileEmulation"] =
            json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}});
    }
    caps.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with Chromium");
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

async fn fill(client: &Client, css: &str, text: &str) {
    let input = client.find(Locator::Css(css)).await.expect(css);
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

async fn click_button(client: &Client, label: &str) {
    client
        .find(Locator::XPath(&format!(
            "//button[normalize-space(.)='{label}']"
        )))
        .await
        .unwrap_or_else(|_| panic!("a button labelled {label:?}"))
        .click()
        .await
        .expect("click");
}

async fn click_link(client: &Client, text: &str) {
    client
        .find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|_| panic!("a link {text:?}"))
        .click()
        .await
        .expect("click");
}

async fn h1(client: &Client) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("h1"))
        .await
        .expect("a heading")
        .text()
        .await
        .unwrap_or_default()
}

/// Waits for the page whose heading is `expected` (navigation is asynchronous).
async fn expect_h1(client: &Client, expected: &str) {
    let mut seen = String::new();
    for _ in 0..50 {
        seen = h1(client).await;
        if seen == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("expected the page {expected:?}, saw {seen:?}");
}

async fn browser_sign_in(stack: &Stack, client: &Client, credential: &str) {
    client.goto(&stack.url("/")).await.expect("open /");
    expect_h1(client, "Sign in").await;
    fill(client, "#credential", credential).await;
    click_button(client, "Sign in").await;
    expect_h1(client, "Status").await;
}

/// Waits until `check` holds, for up to `within`.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn an_operator_generates_a_key_limits_it_and_revokes_it_in_the_browser() {
    let stack = Stack::start().await;
    let browser = browser(1280, 800).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, INTERNAL_TOKEN).await;

    // The guide's path: Settings → API Keys → Generate New Key.
    click_link(client, "Settings").await;
    expect_h1(client, "Settings").await;
    click_link(client, "API Keys").await;
    expect_h1(client, "API Keys").await;
    click_button(client, "Generate New Key").await;
    expect_h1(client, "Generate New Key").await;
    fill(client, "#name", "browser-made").await;
    click_button(client, "Create key").await;
    expect_h1(client, "New API key").await;
    let key = client
        .find(Locator::Css("#new-key"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .expect("the key is shown");
    assert!(key.starts_with("oc_"), "{key}");
    let curl = client
        .find(Locator::Css("#curl"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        curl.contains(&format!("Authorization: Bearer {key}")),
        "{curl}"
    );
    assert!(curl.contains("/api/v1/system/status"), "{curl}");
    client
        .find(Locator::Css("button[data-copy='new-key']"))
        .await
        .expect("a copy button");

    // The shown key answers the guide's status request.
    assert_eq!(status_with(&stack, &key).await, 200);

    // After a reload the key is not on the page.
    client.refresh().await.unwrap();
    expect_h1(client, "API Keys").await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/dashboard/settings/keys")
    );
    assert!(!client.source().await.unwrap().contains(&key));

    // Edit its limits and see them enforced.
    let id = key_id(&stack, "browser-made").await;
    client
        .find(Locator::Css(&format!(
            "a[href='/dashboard/settings/keys/{id}']"
        )))
        .await
        .expect("an Edit limits link")
        .click()
        .await
        .unwrap();
    expect_h1(client, "Edit limits").await;
    fill(client, "#requests", "2").await;
    click_button(client, "Save limits").await;
    expect_h1(client, "API Keys").await;
    assert!(
        client.source().await.unwrap().contains("/ 2"),
        "the new limit is shown"
    );
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(status_with(&stack, &key).await);
    }
    assert_eq!(
        codes.last(),
        Some(&429),
        "limit of 2 per minute enforced: {codes:?}"
    );

    // Revoke it (with confirmation): 401 within seconds.
    client
        .find(Locator::Css(&format!(
            "a[href='/dashboard/settings/keys/{id}/revoke']"
        )))
        .await
        .expect("a Revoke link")
        .click()
        .await
        .unwrap();
    expect_h1(client, "Revoke key").await;
    click_button(client, "Revoke key").await;
    expect_h1(client, "API Keys").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            status_with(&stack, &key).await == 401
        })
        .await,
        "a revoked key answers 401 within seconds"
    );

    // Status page: state, version and live charts.
    click_link(client, "Status").await;
    let html = client.source().await.unwrap();
    assert!(html.contains(env!("CARGO_PKG_VERSION")) && html.contains("running"));
    for chart in ["chart-requests", "chart-tokens", "chart-rejections"] {
        client.find(Locator::Id(chart)).await.expect(chart);
    }
    let updated = client
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("[data-updated]"))
        .await;
    assert!(updated.is_ok(), "the charts refresh from the JSON endpoint");

    // Sign out: back to the sign-in page, and the dashboard needs signing in again.
    click_button(client, "Sign out").await;
    expect_h1(client, "Sign in").await;
    client
        .goto(&stack.url("/dashboard/settings/keys"))
        .await
        .unwrap();
    expect_h1(client, "Sign in").await;
}

#[tokio::test]
async fn a_key_holder_sees_only_its_own_key_and_sessions() {
    let stack = Stack::start().await;
    let mine = stack.create_key("holder-key").await;
    let theirs = stack.create_key("someone-else").await;
    let their_session = expect_data(
        stack
            .post(
                "/api/v1/sessions",
                &theirs,
                &json!({"messages": [{"role": "user", "content": "secret plans"}]}),
            )
            .await,
        201,
    )
    .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let their_id = key_id(&stack, "someone-else").await;

    let browser = browser(1280, 800).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, &mine).await;
    assert!(client.source().await.unwrap().contains("holder-key"));
    click_link(client, "Settings").await;
    click_link(client, "API Keys").await;
    let html = client.source().await.unwrap();
    assert!(html.contains("holder-key"));
    assert!(!html.contains("someone-else") && !html.contains(&their_id));
    assert!(
        client
            .find(Locator::XPath(
                "//button[normalize-space(.)='Generate New Key']"
            ))
            .await
            .is_err(),
        "a key holder cannot generate keys"
    );
    click_link(client, "Sessions").await;
    assert!(!client.source().await.unwrap().contains(&their_session));
    client
        .goto(&stack.url(&format!("/dashboard/sessions/{their_session}")))
        .await
        .unwrap();
    let html = client.source().await.unwrap();
    assert!(
        !html.contains("secret plans"),
        "another key's session is not shown"
    );
    client
        .goto(&stack.url(&format!("/dashboard/settings/keys/{their_id}")))
        .await
        .unwrap();
    assert!(!client.source().await.unwrap().contains("someone-else"));
}

/// A session's history as a person reads it: the image a user sent, the tool the model called
/// with its arguments and id, the result that answers it, and the answer.
#[tokio::test]
async fn a_session_history_shows_images_tool_calls_and_their_results() {
    let stack = Stack::start().await;
    let key = stack.create_key("agent").await;
    stack.upstream.then([
        Behaviour::ToolCalls {
            calls: vec![(
                "call_w1".into(),
                "get_weather".into(),
                r#"{"city":"Paris"}"#.into(),
            )],
            prompt_tokens: 20,
            completion_tokens: 8,
        },
        Behaviour::Reply {
            content: "It is 18 C in Paris.".into(),
            prompt_tokens: 30,
            completion_tokens: 6,
        },
    ]);
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let session = expect_data(
        stack
            .post(
                "/api/v1/sessions",
                &key,
                &json!({"tools": [tool], "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Weather where this was taken?"},
                    {"type": "image_url", "imageUrl": {"url": "https://example.com/paris.jpg"}}
                ]}]}),
            )
            .await,
        201,
    )
    .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    expect_data(
        stack
            .post(
                &format!("/api/v1/sessions/{session}/messages"),
                &key,
                &json!({"message": {"role": "tool", "toolCallId": "call_w1", "content": "18 C"}}),
            )
            .await,
        200,
    )
    .await;

    let browser = browser(1280, 800).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, &key).await;
    client
        .goto(&stack.url(&format!("/dashboard/sessions/{session}")))
        .await
        .unwrap();
    expect_h1(client, "Session history").await;
    let text = |css: &'static str| async move {
        client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|_| panic!("{css} is shown"))
            .text()
            .await
            .unwrap()
    };
    let user = text("li.msg.user").await;
    assert!(user.contains("Weather where this was taken?"), "{user}");
    assert!(
        user.contains("image https://example.com/paris.jpg"),
        "{user}"
    );
    let call = text("li.msg.assistant").await;
    assert!(
        call.contains(r#"calls get_weather with {"city":"Paris"} (call_w1)"#),
        "{call}"
    );
    let result = text("li.msg.tool").await;
    assert!(result.contains("result of call_w1"), "{result}");
    assert!(result.contains("18 C"), "{result}");
    let answer = text("li.msg.assistant:last-child").await;
    assert!(answer.contains("It is 18 C in Paris."), "{answer}");
}

#[tokio::test]
async fn a_key_holder_signs_out_everywhere_from_settings_in_the_browser() {
    let stack = Stack::start().await;
    let key = stack.create_key("shared-laptop").await;
    let (elsewhere, _) = sign_in(&stack, &key, &[]).await;
    let (operator, _) = sign_in(&stack, INTERNAL_TOKEN, &[]).await;

    let browser = browser(1280, 800).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, &key).await;
    click_link(client, "Settings").await;
    click_button(client, "Sign out everywhere").await;
    expect_h1(client, "Sign in").await;
    assert!(
        client.source().await.unwrap().contains("has been ended"),
        "the sign-in page says what happened"
    );
    client.goto(&stack.url("/dashboard/status")).await.unwrap();
    expect_h1(client, "Sign in").await;
    let status = stack.url("/dashboard/status");
    let page = page_for(&status, &elsewhere, &[]).await;
    assert!(
        sent_to_sign_in(&page),
        "the key's other session ended: {page:?}"
    );
    let page = page_for(&status, &operator, &[]).await;
    assert!(signed_in(&page), "the operator's session stays: {page:?}");
}

// ---------------------------------------------------------------- spend: budgets and usage

/// What the fake upstream reports for every call, and the two priced models: a call to
/// `zai/glm-4.7-flash` costs 1200 × $500/MTok + 800 × $1000/MTok = $1.40, one to
/// `zai/glm-4.5-flash` 1200 × $100/MTok + 800 × $300/MTok = $0.36.
const PROMPT_TOKENS: u64 = 1200;
const COMPLETION_TOKENS: u64 = 800;
const FLASH_CALL_MICROS: u64 = 1_400_000;
const SMALL_CALL_MICROS: u64 = 360_000;

async fn priced_stack() -> Stack {
    let stack = Stack::with_providers(|upstream| {
        format!(
            r#"
            [[providers]]
            name = "zai"
            baseUrl = "{}"
            apiKeyEnv = "ZAI_API_KEY"
            models = [
              {{ name = "glm-4.7-flash", inputPricePerMTok = 500.0, outputPricePerMTok = 1000.0 }},
              {{ name = "glm-4.5-flash", inputPricePerMTok = 100.0, outputPricePerMTok = 300.0 }},
            ]
            "#,
            upstream.base_url()
        )
    })
    .await;
    stack.upstream.behave(support::Behaviour::Reply {
        content: "priced answer".into(),
        prompt_tokens: PROMPT_TOKENS as u32,
        completion_tokens: COMPLETION_TOKENS as u32,
    });
    stack
}

/// A key that may make every call these tests make within a minute.
async fn roomy_key(stack: &Stack, name: &str) -> String {
    create_key(
        &stack.http,
        &stack.url(""),
        name,
        json!({"limits": {"tokensPerMinute": 10_000_000, "contextTokensPerMinute": 10_000_000}}),
    )
    .await
}

/// One model call billed to `key`: a new session's first turn.
async fn priced_call(stack: &Stack, key: &str, model: &str) {
    expect_data(
        stack
            .post(
                "/api/v1/sessions",
                key,
                &json!({"model": model, "messages": [{"role": "user", "content": "What does it cost?"}]}),
            )
            .await,
        201,
    )
    .await;
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// The text of the element `css`, trimmed.
async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|_| panic!("an element {css}"))
        .text()
        .await
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The cells of the table row whose heading is `name`, by their labels.
async fn row_of(
    client: &Client,
    table: &str,
    name: &str,
) -> std::collections::HashMap<String, String> {
    let row = client
        .find(Locator::XPath(&format!(
            "//table[@id='{table}']//tr[th[normalize-space(.)='{name}']]"
        )))
        .await
        .unwrap_or_else(|_| panic!("a row {name:?} in #{table}"));
    let mut cells = std::collections::HashMap::new();
    for cell in row.find_all(Locator::Css("td")).await.unwrap() {
        let label = cell.attr("data-label").await.unwrap().unwrap_or_default();
        cells.insert(label, cell.text().await.unwrap().trim().to_string());
    }
    cells
}

#[tokio::test]
async fn an_operator_sets_a_budget_in_the_browser_and_the_key_shows_its_spend_against_it() {
    let stack = priced_stack().await;
    let key = roomy_key(&stack, "budgeted").await;
    let id = key_id(&stack, "budgeted").await;
    let browser = browser(1280, 900).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, INTERNAL_TOKEN).await;

    // The core's word on a wrong value is shown like any other error.
    client
        .goto(&stack.url(&format!("/dashboard/settings/keys/{id}")))
        .await
        .unwrap();
    expect_h1(client, "Edit limits").await;
    fill(client, "#budget-limit", "5").await;
    fill(client, "#budget-zone", "Mars/Olympus_Mons").await;
    click_button(client, "Save budget").await;
    expect_h1(client, "Invalid budget").await;
    assert!(
        client.source().await.unwrap().contains("IANA time zone"),
        "the core says what is wrong"
    );

    // $20.00 a day (a call reserves its worst case, about $4.10, until it settles), alerts at
    // 50% and 80%.
    client
        .goto(&stack.url(&format!("/dashboard/settings/keys/{id}")))
        .await
        .unwrap();
    expect_h1(client, "Edit limits").await;
    fill(client, "#budget-limit", "20.00").await;
    client
        .find(Locator::Css("#budget-period option[value='day']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(client, "#budget-zone", "UTC").await;
    fill(client, "#budget-thresholds", "50, 80").await;
    click_button(client, "Save budget").await;
    expect_h1(client, "API Keys").await;
    let budget = expect_data(
        stack
            .get(&format!("/api/v1/keys/{id}"), INTERNAL_TOKEN)
            .await,
        200,
    )
    .await;
    assert_eq!(budget["budget"]["limitMicros"], 20_000_000, "{budget}");
    assert_eq!(budget["budget"]["period"], "day", "{budget}");
    assert_eq!(
        budget["budget"]["thresholds"],
        json!([0.5, 0.8]),
        "{budget}"
    );

    // Two calls at $1.40: $2.80 of $20.00 today, resetting at the next UTC midnight.
    priced_call(&stack, &key, "zai/glm-4.7-flash").await;
    priced_call(&stack, &key, "zai/glm-4.7-flash").await;
    client.refresh().await.unwrap();
    expect_h1(client, "API Keys").await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    let card = format!("li.key[data-key-id='{id}'] .budget .usage-label");
    assert_eq!(
        text_of(client, &card).await,
        format!("Spend: $2.80 of $20.00 today · resets {tomorrow} 00:00 UTC")
    );
    let meter = client
        .find(Locator::Css(&format!(
            "li.key[data-key-id='{id}'] .budget meter"
        )))
        .await
        .unwrap();
    assert_eq!(
        meter.attr("value").await.unwrap().as_deref(),
        Some("2800000")
    );
    assert_eq!(
        meter.attr("max").await.unwrap().as_deref(),
        Some("20000000")
    );
    assert!(
        text_of(client, &format!("li.key[data-key-id='{id}'] .budget .hint"))
            .await
            .contains("Alerts at 50%, 80%")
    );

    // The key holder sees the same on its own key.
    let holder = browser_for_key(&stack, &key).await;
    holder
        .client
        .goto(&stack.url("/dashboard/settings/keys"))
        .await
        .unwrap();
    expect_h1(&holder.client, "API Keys").await;
    assert!(
        text_of(&holder.client, ".budget .usage-label")
            .await
            .starts_with("Spend: $2.80 of $20.00 today"),
    );
    drop(holder);

    // Removing the budget: the key's spend is no longer limited.
    client
        .goto(&stack.url(&format!("/dashboard/settings/keys/{id}")))
        .await
        .unwrap();
    expect_h1(client, "Edit limits").await;
    click_button(client, "Remove budget").await;
    expect_h1(client, "API Keys").await;
    assert!(
        text_of(client, &format!("li.key[data-key-id='{id}'] .budget"))
            .await
            .starts_with("Budget: none")
    );
    let key_now = expect_data(
        stack
            .get(&format!("/api/v1/keys/{id}"), INTERNAL_TOKEN)
            .await,
        200,
    )
    .await;
    assert!(key_now["budget"].is_null(), "{key_now}");
}

/// A second browser, signed in with `key`.
async fn browser_for_key(stack: &Stack, key: &str) -> Browser {
    let browser = browser(1280, 900).await;
    browser_sign_in(stack, &browser.client, key).await;
    browser
}

#[tokio::test]
async fn the_usage_page_charts_the_ledger_and_its_tables_hold_the_ledgers_figures() {
    let stack = priced_stack().await;
    let alpha = roomy_key(&stack, "alpha-service").await;
    let beta = roomy_key(&stack, "beta-service").await;
    for _ in 0..2 {
        priced_call(&stack, &alpha, "zai/glm-4.7-flash").await;
    }
    priced_call(&stack, &alpha, "zai/glm-4.5-flash").await;
    priced_call(&stack, &beta, "zai/glm-4.5-flash").await;
    let alpha_micros = 2 * FLASH_CALL_MICROS + SMALL_CALL_MICROS; // $3.16
    let beta_micros = SMALL_CALL_MICROS; // $0.36
    let total = alpha_micros + beta_micros; // $3.52

    // The ledger, as the usage API reports it to the internal token.
    let ledger = expect_data(
        stack
            .get("/api/v1/usage?groupBy=model", INTERNAL_TOKEN)
            .await,
        200,
    )
    .await;
    assert_eq!(ledger["totals"]["costMicros"], total, "{ledger}");
    assert_eq!(ledger["totals"]["requests"], 4, "{ledger}");

    let browser = browser(1280, 900).await;
    let client = &browser.client;
    browser_sign_in(&stack, client, INTERNAL_TOKEN).await;
    click_link(client, "Usage").await;
    expect_h1(client, "Usage").await;

    // Charts with labelled axes, every bar with its figures on hover.
    for chart in [
        "chart-spend",
        "chart-usage-tokens",
        "chart-models",
        "chart-keys",
    ] {
        client.find(Locator::Id(chart)).await.expect(chart);
    }
    let spend = client.find(Locator::Id("chart-spend")).await.unwrap();
    let titles = spend
        .find_all(Locator::Css("text.axis-title"))
        .await
        .unwrap();
    let mut axis_titles = Vec::new();
    for t in titles {
        axis_titles.push(t.text().await.unwrap());
    }
    assert_eq!(axis_titles, ["US dollars", "Date (UTC)"]);
    let tokens_svg = client.source().await.unwrap();
    assert!(
        tokens_svg.contains(">Tokens</text>"),
        "the tokens chart's y axis is labelled"
    );
    assert!(
        tokens_svg.contains(&format!("<title>{}: $3.52</title>", today())),
        "today's spend bar names its figure"
    );
    assert!(tokens_svg.contains("<title>zai/glm-4.7-flash: $2.80</title>"));

    // Today's line and the totals equal the ledger's figures.
    let day = row_of(client, "table-time", &today()).await;
    assert_eq!(day["Cost"], "$3.52");
    assert_eq!(day["Requests"], "4");
    // Counts are shown with thousands separators.
    assert_eq!(day["Prompt tokens"], "4,800");
    assert_eq!(day["Completion tokens"], "3,200");
    assert_eq!(row_of(client, "table-time", "Total").await["Cost"], "$3.52");
    for row in ledger["rows"].as_array().unwrap() {
        let model = row["model"].as_str().unwrap();
        let cells = row_of(client, "table-models", model).await;
        assert_eq!(
            cells["Requests"].replace(',', ""),
            row["requests"].to_string(),
            "{model}"
        );
        assert_eq!(
            cells["Cost"],
            dollars(row["costMicros"].as_u64().unwrap()),
            "{model}"
        );
    }
    let by_key = expect_data(
        stack.get("/api/v1/usage?groupBy=key", INTERNAL_TOKEN).await,
        200,
    )
    .await;
    let alpha_id = key_id(&stack, "alpha-service").await;
    let alpha_row = by_key["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["keyId"] == alpha_id.as_str())
        .expect("alpha's row");
    assert_eq!(alpha_row["costMicros"], alpha_micros);
    let alpha_prefix = prefix_of(&stack, &alpha_id).await;
    let cells = row_of(
        client,
        "table-keys",
        &format!("alpha-service ({alpha_prefix}…)"),
    )
    .await;
    assert_eq!(cells["Cost"], "$3.16");
    assert_eq!(cells["Requests"], "3");

    // Per week: the same figures in one line for this week.
    client
        .find(Locator::Css("#per option[value='week']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click_button(client, "Show").await;
    expect_h1(client, "Usage").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.source().await.unwrap().contains("Spend per week")
        })
        .await
    );
    assert_eq!(row_of(client, "table-time", "Total").await["Cost"], "$3.52");

    // The CSV link downloads what the usage API answers for `Accept: text/csv`.
    let link = client
        .find(Locator::LinkText("per model"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .expect("a CSV link");
    let (cookie, _) = sign_in(&stack, INTERNAL_TOKEN, &[]).await;
    let csv = http()
        .get(stack.url(&link))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let csv = csv.text().await.unwrap();
    let api = link
        .replace("/dashboard/usage.csv", "/api/v1/usage")
        .replace("group_by=", "groupBy=");
    let api_csv = stack
        .http
        .get(stack.url(&api))
        .bearer_auth(INTERNAL_TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv, api_csv);
    assert!(
        csv.contains(&format!(
            ",2,0,{},{},0,{}",
            2 * PROMPT_TOKENS,
            2 * COMPLETION_TOKENS,
            2 * FLASH_CALL_MICROS
        )),
        "{csv}"
    );

    // The range selector: days before the calls hold nothing; a backwards range is the core's
    // refusal, shown as an error page.
    let quiet = (chrono::Utc::now() - chrono::Duration::days(20))
        .format("%Y-%m-%d")
        .to_string();
    let quieter = (chrono::Utc::now() - chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    client
        .goto(&stack.url(&format!("/dashboard/usage?from={quiet}&to={quieter}")))
        .await
        .unwrap();
    expect_h1(client, "Usage").await;
    let from = client.find(Locator::Id("from")).await.unwrap();
    assert_eq!(
        from.prop("value").await.unwrap().as_deref(),
        Some(quiet.as_str())
    );
    assert_eq!(text_of(client, "#total-cost").await, "$0.00");
    assert_eq!(
        client
            .find_all(Locator::Css("#table-time tbody tr"))
            .await
            .unwrap()
            .len(),
        11,
        "one line per day of the range"
    );
    client
        .goto(&stack.url(&format!("/dashboard/usage?from={quieter}&to={quiet}")))
        .await
        .unwrap();
    assert_ne!(h1(client).await, "Usage", "a backwards range is refused");
    let refusal = text_of(client, "p[role='alert']").await;
    assert!(!refusal.is_empty(), "the core's details are shown");

    // A key holder's Usage page is its own key's.
    let holder = browser_for_key(&stack, &beta).await;
    holder
        .client
        .goto(&stack.url("/dashboard/usage"))
        .await
        .unwrap();
    expect_h1(&holder.client, "Usage").await;
    assert_eq!(
        row_of(&holder.client, "table-time", "Total").await["Cost"],
        "$0.36"
    );
    let html = holder.client.source().await.unwrap();
    assert!(!html.contains("alpha-service") && !html.contains("chart-keys"));
}

/// The safe-to-show start of key `id`.
async fn prefix_of(stack: &Stack, id: &str) -> String {
    let key = expect_data(
        stack
            .get(&format!("/api/v1/keys/{id}"), INTERNAL_TOKEN)
            .await,
        200,
    )
    .await;
    key["prefix"].as_str().unwrap_or_default().to_string()
}

/// Dollars as the dashboard shows them.
fn dollars(micros: u64) -> String {
    let fraction = format!("{:06}", micros % 1_000_000);
    let digits = fraction.trim_end_matches('0');
    let shown = if digits.len() < 2 {
        &fraction[..2]
    } else {
        digits
    };
    format!("${}.{shown}", micros / 1_000_000)
}

// ---------------------------------------------------------------- screenshots

/// Regenerates `docs/screenshots/*.png` (run by `scripts/dashboard-screenshots.sh`).
#[tokio::test]
#[ignore = "writes docs/screenshots; run scripts/dashboard-screenshots.sh"]
async fn screenshots_of_every_page() {
    let stack = Stack::start().await;
    let key = create_key(
        &stack.http,
        &stack.url(""),
        "billing-service",
        json!({"limits": {"requestsPerMinute": 20}}),
    )
    .await;
    create_key(
        &stack.http,
        &stack.url(""),
        "nightly-reports",
        json!({"scopes": ["cron", "status"]}),
    )
    .await;
    let session = expect_data(
        stack
            .post(
                "/api/v1/sessions",
                INTERNAL_TOKEN,
                &json!({"messages": [{"role": "user", "content": "Hello"}]}),
            )
            .await,
        201,
    )
    .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    for text in ["What can you do?", "Summarise our plan"] {
        let _ = stack
            .http
            .post(stack.url(&format!("/api/v1/sessions/{session}/messages")))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&json!({"message": {"role": "user", "content": text}}))
            .send()
            .await;
    }
    let job: Value = stack
        .http
        .post(stack.url("/api/v1/cron/jobs"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"name": "Daily backup notice", "schedule": {"kind": "cron", "expr": "0 9 * * *", "tz": "Europe/Berlin"},
                      "payload": {"kind": "systemEvent", "text": "Running daily backup"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["data"]["id"].as_str().unwrap_or_default().to_string();
    let _ = stack
        .http
        .post(stack.url("/api/v1/cron/jobs"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(
            &json!({"name": "Heartbeat", "schedule": {"kind": "every", "everyMs": 3600000},
                      "payload": {"kind": "systemEvent", "text": "still here"}}),
        )
        .send()
        .await;
    let _ = stack
        .http
        .post(stack.url(&format!("/api/v1/cron/jobs/{job_id}/run")))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await;
    // Some traffic for the charts: a model call billed to a key, and more requests than it may make.
    let _ = stack
        .http
        .post(stack.url("/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "Hello from billing"}]}))
        .send()
        .await;
    for _ in 0..25 {
        let _ = status_with(&stack, &key).await;
    }

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&out).unwrap();
    for (size, width, height) in [("desktop", 1280, 800), ("phone", 390, 844)] {
        let browser = browser(width, height).await;
        let client = &browser.client;
        let shot = |name: String| {
            let path = out.join(format!("{name}-{size}.png"));
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let png = client.screenshot().await.expect("screenshot");
                std::fs::write(&path, png).expect("write screenshot");
            }
        };
        client.goto(&stack.url("/dashboard/login")).await.unwrap();
        shot("login".into()).await;
        fill(client, "#credential", INTERNAL_TOKEN).await;
        click_button(client, "Sign in").await;
        h1(client).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        shot("status".into()).await;
        client
            .execute("document.querySelector('.charts').scrollIntoView()", vec![])
            .await
            .expect("scroll to the charts");
        shot("status-charts".into()).await;
        for (name, path) in [
            ("api-keys", "/dashboard/settings/keys".to_string()),
            ("generate-key", "/dashboard/settings/keys/new".to_string()),
            ("sessions", "/dashboard/sessions".to_string()),
            ("session", format!("/dashboard/sessions/{session}")),
            ("cron", "/dashboard/cron".to_string()),
            ("cron-runs", format!("/dashboard/cron/{job_id}")),
        ] {
            client.goto(&stack.url(&path)).await.unwrap();
            h1(client).await;
            shot(name.into()).await;
        }
        client.goto(&stack.url("/dashboard/events")).await.unwrap();
        h1(client).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stack
            .http
            .post(stack.url(&format!("/api/v1/cron/jobs/{job_id}/run")))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        shot("events".into()).await;
    }
}

/// Regenerates the Usage and budget screenshots: two weeks of priced calls from two keys,
/// each day made by a core whose spend clock is set that many days back (one Redis keeps the
/// ledger), then the pages at desktop and phone width.
#[tokio::test]
#[ignore = "writes docs/screenshots; run scripts/dashboard-screenshots.sh"]
async fn screenshots_of_usage_and_budgets() {
    let redis = start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            r#"
            [[providers]]
            name = "zai"
            baseUrl = "{}"
            apiKeyEnv = "ZAI_API_KEY"
            models = [
              {{ name = "glm-4.7-flash", inputPricePerMTok = 3.0, outputPricePerMTok = 15.0 }},
              {{ name = "glm-4.5-flash", inputPricePerMTok = 0.5, outputPricePerMTok = 1.5 }},
            ]
            "#,
            upstream.base_url()
        ),
    )
    .unwrap();
    let start = |days_back: i64| {
        let core = spawn_core(&CoreOptions {
            redis_url: Some(redis_url(&redis)),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![
                (
                    "OPENCLAW_PROVIDERS_FILE".into(),
                    providers.display().to_string(),
                ),
                (
                    "OPENCLAW_SPEND_CLOCK_OFFSET_SECONDS".into(),
                    (-days_back * 86_400).to_string(),
                ),
            ],
        });
        let edge = spawn_edge_with(&[&core], &[]);
        (core, edge)
    };
    let mut keys: Vec<String> = Vec::new();
    let http = reqwest::Client::new();
    for days_back in (0..14i64).rev() {
        let (_core, edge) = start(days_back);
        wait_until_ready(&edge).await;
        let base = format!("http://127.0.0.1:{}", edge.port);
        if keys.is_empty() {
            let limits = json!({"limits": {"tokensPerMinute": 10_000_000, "contextTokensPerMinute": 10_000_000}});
            for name in ["billing-service", "support-bot"] {
                keys.push(create_key(&http, &base, name, limits.clone()).await);
            }
        }
        // Weekdays busier than weekends, the bot growing over the fortnight.
        let busy = 3 + (days_back * 5 % 7) as usize;
        for call in 0..busy {
            let (key, model) = match call % 3 {
                0 => (&keys[1], "zai/glm-4.5-flash"),
                1 => (&keys[0], "zai/glm-4.7-flash"),
                _ => (&keys[1], "zai/glm-4.7-flash"),
            };
            upstream.behave(support::Behaviour::Reply {
                content: "ok".into(),
                prompt_tokens: 1500 + 400 * call as u32,
                completion_tokens: 300 + 120 * (call as u32 % 4),
            });
            let _ = post_with_key(
                &http,
                format!("{base}/api/v1/sessions"),
                key,
                &json!({"model": model, "messages": [{"role": "user", "content": "Summarise the ticket"}]}),
            )
            .await;
        }
    }
    let (_core, edge) = start(0);
    wait_until_ready(&edge).await;
    let base = format!("http://127.0.0.1:{}", edge.port);
    let keys_listed: Value = http
        .get(format!("{base}/api/v1/keys"))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let billing = keys_listed["data"]
        .as_array()
        .or_else(|| keys_listed["data"]["keys"].as_array())
        .and_then(|keys| keys.iter().find(|k| k["name"] == "billing-service"))
        .and_then(|k| k["id"].as_str())
        .expect("billing-service")
        .to_string();
    let budget = http
        .patch(format!("{base}/api/v1/keys/{billing}"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"budget": {"limitMicros": 500_000, "period": "day", "timeZone": "UTC", "thresholds": [0.5, 0.8]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), 200, "{}", budget.text().await.unwrap());
    for call in 0..4u32 {
        upstream.behave(support::Behaviour::Reply {
            content: "ok".into(),
            prompt_tokens: 2000 + 500 * call,
            completion_tokens: 600,
        });
        let _ = post_with_key(
            &http,
            format!("{base}/api/v1/sessions"),
            &keys[0],
            &json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "Invoice run"}]}),
        )
        .await;
    }

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    for (size, width, height) in [("desktop", 1280, 900), ("phone", 390, 844)] {
        let browser = browser(width, height).await;
        let client = &browser.client;
        let shot = |name: &str| {
            let path = out.join(format!("{name}-{size}.png"));
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let png = client.screenshot().await.expect("screenshot");
                std::fs::write(&path, png).expect("write screenshot");
            }
        };
        client
            .goto(&format!("{base}/dashboard/login"))
            .await
            .unwrap();
        fill(client, "#credential", INTERNAL_TOKEN).await;
        click_button(client, "Sign in").await;
        expect_h1(client, "Status").await;
        client
            .goto(&format!("{base}/dashboard/usage"))
            .await
            .unwrap();
        expect_h1(client, "Usage").await;
        shot("usage").await;
        for (section, name) in [
            ("#time-h", "usage-per-day"),
            ("#model-h", "usage-by-model"),
            ("#key-h", "usage-by-key"),
        ] {
            client
                .execute(
                    &format!("document.querySelector('{section}').scrollIntoView()"),
                    vec![],
                )
                .await
                .expect("scroll");
            shot(name).await;
        }
        client
            .goto(&format!("{base}/dashboard/usage?per=week"))
            .await
            .unwrap();
        expect_h1(client, "Usage").await;
        client
            .execute("document.querySelector('#time-h').scrollIntoView()", vec![])
            .await
            .expect("scroll");
        shot("usage-per-week").await;
        client
            .goto(&format!("{base}/dashboard/settings/keys"))
            .await
            .unwrap();
        expect_h1(client, "API Keys").await;
        client
            .execute(&format!("document.querySelector(\"li[data-key-id='{billing}'] .budget\").scrollIntoView()"), vec![])
            .await
            .expect("scroll");
        shot("key-budget").await;
        client
            .goto(&format!("{base}/dashboard/settings/keys/{billing}"))
            .await
            .unwrap();
        expect_h1(client, "Edit limits").await;
        client
            .execute("document.querySelector('#budget').scrollIntoView()", vec![])
            .await
            .expect("scroll");
        shot("budget-form").await;
    }
}

#[tokio::test]
async fn the_embedded_default_serves_the_dashboard_too() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("local").await;
    let (pair, _) = sign_in(&stack, &key, &[]).await;
    let page = http()
        .get(stack.url("/dashboard/settings/keys"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("local") && !html.contains(&key),
        "the key's name, never its secret"
    );
    let usage = http()
        .get(stack.url("/dashboard/status"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        usage.contains("Your usage this minute"),
        "a key holder sees its own usage"
    );

    // Without Redis, signing out everywhere ends the key's sessions all the same.
    let (other, _) = sign_in(&stack, &key, &[]).await;
    let out = http()
        .post(stack.url("/dashboard/logout/everywhere"))
        .header("cookie", &pair)
        .form(&[("csrf", csrf_of(&usage).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    for cookie in [&pair, &other] {
        let page = page_for(&stack.url("/dashboard/status"), cookie, &[]).await;
        assert!(sent_to_sign_in(&page), "{page:?}");
    }
}
