//! The dashboard in a real headless Chromium against a real `berth server` and Docker engine:
//! sign-in, create, deploy, watch progress, roll back, sign out; custom domains and edge settings;
//! and what each role may do.
//! Screenshots of every page go to `target/artifacts/screenshots` (or `$BERTH_ARTIFACTS`).

use std::time::{Duration, Instant};

use berth_tests::browser::Browser;
use berth_tests::{Fixture, Server, get};
use serde_json::json;

use super::host;

fn ensure_dashboard_built() -> anyhow::Result<()> {
    let binary = berth_tests::berth_binary()?;
    let js = binary.parent().expect("BUG: a binary has a directory").join("site/pkg/berth.js");
    anyhow::ensure!(js.is_file(), "the dashboard's wasm is not built at {} (cargo xtask dashboard)", js.display());
    Ok(())
}

async fn sign_in(browser: &Browser, server: &Server, email: &str, password: &str) -> anyhow::Result<()> {
    browser.goto(&format!("http://{}/signin", server.api)).await?;
    browser.fill("#email", email).await?;
    browser.fill("#password", password).await?;
    browser.click("#sign-in").await?;
    browser.wait_for("#sign-out").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deploys_watches_and_rolls_back_from_the_browser() -> anyhow::Result<()> {
    ensure_dashboard_built()?;
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
    let browser = Browser::start(&fixture.dir, "journey").await?;

    // Without a session every page leads to the sign-in form.
    browser.goto(&format!("{base}/teams/main/apps")).await?;
    browser.wait_for("#sign-in").await?;
    assert!(browser.path().await?.starts_with("/signin?next=/teams/main/apps"), "{}", browser.path().await?);
    browser.screenshot("01-sign-in").await?;

    // A wrong password is refused with a message.
    browser.fill("#email", "admin@localhost").await?;
    browser.fill("#password", "not the password").await?;
    browser.click("#sign-in").await?;
    let refused = browser.wait_text("#sign-in-error", "Wrong email or password").await?;
    println!("wrong password: {refused}");
    browser.screenshot("02-sign-in-refused").await?;

    // The right one leads to where the user was going.
    browser.fill("#email", "admin@localhost").await?;
    browser.fill("#password", &password).await?;
    browser.click("#sign-in").await?;
    browser.wait_for("#new-app").await?;
    assert_eq!(browser.path().await?, "/teams/main/apps");
    browser.wait_text("main", "No apps yet").await?;
    browser.screenshot("03-apps-empty").await?;

    // Create an app; a bad name is reported beside its field, nothing is created.
    browser.click("#new-app").await?;
    browser.wait_hydrated().await?;
    browser.fill("#name", "Not_A_Label").await?;
    browser.fill("#image", &fixture.image_v1).await?;
    browser.fill("#replicas", "2").await?;
    browser.fill("#health-path", "/up").await?;
    browser.click("#create").await?;
    let complaint = browser.wait_text("#name-error", "").await?;
    assert!(!complaint.is_empty());
    println!("bad name: {complaint}");
    browser.screenshot("04-create-app-error").await?;
    assert!(server.api().show("Not_A_Label").await.is_err());

    browser.fill("#name", "web").await?;
    let clicked = Instant::now();
    browser.click("#create").await?;
    browser.wait_for("#progress[data-release='1'][data-state='serving']").await?;
    let first_release = clicked.elapsed();
    browser.wait_text("#app-replicas", "2 / 2 ready").await?;
    println!("create clicked -> release 1 serving (seen in the browser): {} ms", first_release.as_millis());
    let (status, body) = get(server.ingress, &host("web"), "/").await?;
    assert_eq!(status, 200);
    assert!(body.contains("v1"), "{body}");
    let url = browser.wait_for("#app-url").await?.attr("href").await?.unwrap_or_default();
    assert!(url.starts_with("http://web.localhost:"), "{url}");
    // Some traffic for the charts, then the page with its replicas, charts and logs.
    for _ in 0..20 {
        get(server.ingress, &host("web"), "/").await?;
    }
    browser.wait_for("#replicas tr[data-phase='ready']").await?;
    // The replicas' output arrives in the logs panel.
    browser.wait_text("#logs", "hello v1 listening").await?;
    browser.screenshot("05-app-v1").await?;
    // The charts fill from the ingress's figures and the containers' samples (pushed every 2 s).
    browser.wait_text(".charts", "CPU").await?;
    browser.client().execute("document.querySelector('.charts').scrollIntoView();", vec![]).await?;
    browser.wait_for(".chart path.line").await?;
    browser.screenshot("05b-app-charts").await?;
    browser.client().execute("window.scrollTo(0, 0);", vec![]).await?;

    // Deploy v2 from the page and watch the progress reach done.
    browser.fill("#deploy-image", &fixture.image_v2).await?;
    let clicked = Instant::now();
    browser.click("#deploy").await?;
    browser.wait_for("#progress[data-release='2']").await?;
    browser.wait_for("#progress[data-release='2'] li[data-phase='shifting_traffic']").await?;
    browser.wait_for("#progress[data-release='2'][data-state='serving']").await?;
    let deploy = clicked.elapsed();
    let (_, body) = get(server.ingress, &host("web"), "/").await?;
    assert!(body.contains("v2"), "{body}");
    let phases = browser.wait_for("#progress ol.events").await?.text().await?.to_lowercase();
    for phase in ["starting", "shifting traffic", "draining", "done"] {
        assert!(phases.contains(phase), "no {phase:?} in the progress: {phases}");
    }
    println!("Deploy clicked -> release 2 serving (seen in the browser): {} ms", deploy.as_millis());
    // The logs follow the new replicas.
    browser.wait_text("#logs", "hello v2 listening").await?;
    browser.screenshot("06-app-v2-deployed").await?;

    // Roll back: release 3 serves v1 again.
    browser.click("#rollback").await?;
    browser.wait_for("#progress[data-release='3'][data-state='serving']").await?;
    let (_, body) = get(server.ingress, &host("web"), "/").await?;
    assert!(body.contains("v1"), "{body}");
    browser.wait_for("#releases tr[data-release='2'][data-state='superseded']").await?;
    browser.screenshot("07-app-rolled-back").await?;
    // The fields follow the serving release; editing the environment makes a release too.
    let image = browser.client().execute("return document.querySelector('#deploy-image').value;", vec![]).await?;
    assert_eq!(image, json!(fixture.image_v1));
    browser.fill("#env-edit", "GREETING=ahoy\n").await?;
    browser.click("#save-env").await?;
    browser.wait_for("#progress[data-release='4'][data-state='serving']").await?;
    let detail = server.api().show("web").await?;
    let serving = detail.releases.iter().find(|r| r.number == 4).expect("release 4");
    assert_eq!(serving.spec.env.get("GREETING").map(String::as_str), Some("ahoy"));
    assert_eq!(serving.spec.image, fixture.image_v1);

    // The apps list shows the app live; the hosts page shows this server's host.
    browser.goto(&format!("{base}/teams/main/apps")).await?;
    browser.wait_text("#apps tr[data-app='web']", "2 / 2 ready").await?;
    browser.screenshot("08-apps").await?;
    browser.goto(&format!("{base}/hosts")).await?;
    browser.wait_for(&format!("#hosts li[data-host='{}']", server.host_name())).await?;
    browser.screenshot("09-hosts").await?;
    browser.goto(&format!("{base}/teams/main/audit")).await?;
    browser.wait_for("#audit tr[data-action='rollback']").await?;
    browser.screenshot("10-audit").await?;

    // Narrow (phone) width: the app page still renders without horizontal page overflow.
    browser.client().set_window_size(390, 844).await?;
    browser.goto(&format!("{base}/teams/main/apps/web")).await?;
    browser.wait_for("#progress").await?;
    let overflow = browser
        .client()
        .execute("return document.documentElement.scrollWidth > window.innerWidth + 1;", vec![])
        .await?;
    browser.screenshot("11-app-phone").await?;
    assert_eq!(overflow, json!(false), "the page is wider than a phone screen");
    browser.client().set_window_size(1280, 1000).await?;

    // Sign out: the session is gone, pages lead to the sign-in form again.
    browser.wait_hydrated().await?;
    browser.click("#sign-out").await?;
    browser.wait_text("[role=status]", "signed out").await?;
    browser.goto(&format!("{base}/teams/main/apps/web")).await?;
    browser.wait_for("#sign-in").await?;
    browser.screenshot("12-signed-out").await?;
    browser.close().await?;
    Ok(())
}

/// Creates `email` with `role` in `team` through an invitation, as a user would.
async fn invite(server: &Server, team: &str, role: &str, email: &str, password: &str) -> anyhow::Result<()> {
    let api = server.api();
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/teams/{team}/invites"),
            Some(json!({ "role": role, "email": email })),
        )
        .await?;
    anyhow::ensure!(status == 201, "creating the invitation answered {status}: {created}");
    let token = created["token"].as_str().unwrap_or_default();
    let (status, body) = reqwest::Client::new()
        .post(format!("http://{}/api/v1/invites/{token}/accept", server.api))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))?;
    anyhow::ensure!(status < 300, "accepting the invitation answered {status}: {}", body.text().await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_enforces_roles_like_the_api() -> anyhow::Result<()> {
    ensure_dashboard_built()?;
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let api = server.api();
    let release = api
        .create_app(
            json!({ "name": "shop", "image": fixture.image_v1, "port": 8080, "replicas": 1, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving("shop", release).await?;
    let (status, _) = api.call(reqwest::Method::POST, "/api/v1/teams", Some(json!({ "name": "other" }))).await?;
    assert_eq!(status, 201);
    let password = "a long enough password";
    invite(&server, "main", "viewer", "viewer@example.com", password).await?;
    invite(&server, "main", "deployer", "deployer@example.com", password).await?;
    invite(&server, "other", "owner", "owner@example.com", password).await?;

    // A viewer sees the app but cannot deploy it: the API's refusal is shown, nothing changes.
    let browser = Browser::start(&fixture.dir, "roles").await?;
    sign_in(&browser, &server, "viewer@example.com", password).await?;
    browser.goto(&format!("{base}/teams/main/apps/shop")).await?;
    browser.wait_hydrated().await?;
    browser.wait_text("#app-replicas", "1 / 1 ready").await?;
    browser.fill("#deploy-image", &fixture.image_v2).await?;
    browser.click("#deploy").await?;
    let refused = browser.wait_text("#action-outcome", "Not allowed").await?;
    println!("viewer deploying: {refused}");
    browser.screenshot("viewer-cannot-deploy").await?;
    assert_eq!(api.show("shop").await?.releases.len(), 1);
    browser.click("#sign-out").await?;
    browser.wait_for("#sign-in").await?;

    // A deployer can deploy but cannot manage members.
    sign_in(&browser, &server, "deployer@example.com", password).await?;
    browser.goto(&format!("{base}/teams/main/members")).await?;
    browser.wait_hydrated().await?;
    browser.wait_for("#members tr[data-member='viewer@example.com']").await?;
    browser.fill("#member-email", "owner@example.com").await?;
    browser.click("#add-member button[type=submit]").await?;
    let refused = browser.wait_text("#outcome", "Not allowed").await?;
    println!("deployer adding a member: {refused}");
    browser.screenshot("deployer-cannot-manage-members").await?;
    let (_, members) = api.call(reqwest::Method::GET, "/api/v1/teams/main/members", None).await?;
    assert!(!members.to_string().contains("owner@example.com"), "{members}");
    browser.goto(&format!("{base}/teams/main/apps/shop")).await?;
    browser.wait_hydrated().await?;
    browser.fill("#deploy-image", &fixture.image_v2).await?;
    browser.click("#deploy").await?;
    browser.wait_for("#progress[data-release='2'][data-state='serving']").await?;
    browser.click("#sign-out").await?;
    browser.wait_for("#sign-in").await?;

    // The owner of another team cannot even see that team main or its app exist.
    sign_in(&browser, &server, "owner@example.com", password).await?;
    browser.goto(&format!("{base}/teams/main/apps/shop")).await?;
    let hidden = browser.wait_text("[role=alert]", "Not found").await?;
    println!("owner of another team opening main/shop: {hidden}");
    browser.goto(&format!("{base}/teams/main/apps")).await?;
    browser.wait_text("[role=alert]", "Not found").await?;
    browser.screenshot("foreign-owner-sees-nothing").await?;
    browser.goto(&format!("{base}/teams/other/apps")).await?;
    browser.wait_text("main", "No apps yet").await?;
    browser.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builds_panel_shows_pushes_and_their_live_log() -> anyhow::Result<()> {
    ensure_dashboard_built()?;
    let fixture = Fixture::new()?;
    fixture.track_built_app("main/gitweb");
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
    server.api().create_app(json!({ "name": "gitweb", "port": 8080, "replicas": 1, "health_path": "/up" })).await?;
    let repo = super::git_push::repo(&fixture, &server, "gitweb", "source").await?;
    let browser = Browser::start(&fixture.dir, "builds").await?;
    sign_in(&browser, &server, "admin@localhost", &password).await?;
    browser.goto(&format!("{base}/teams/main/apps/gitweb")).await?;
    browser.wait_text("#builds-panel", "No builds yet").await?;
    let remote = browser.wait_for("#git-remote").await?.text().await?;
    assert!(remote.contains("/git/main/gitweb.git main"), "{remote}");
    browser.wait_hydrated().await?;

    // A push (detached, so the test can watch the page meanwhile) with a slow step: the page
    // shows the build running and its log growing, then the outcome.
    repo.commit("g1", "RUN [\"/hello\", \"sleep\", \"6\"]\n")?;
    repo.run(&["push", "-o", "berth.detach", "berth", "main"])?;
    browser.wait_for("#builds tr[data-build='1'][data-state='building']").await?;
    browser.client().execute("document.querySelector('#builds-panel').scrollIntoView();", vec![]).await?;
    browser.wait_text("#build-log", "Step 1/").await?;
    let running = browser.wait_for("#builds tr[data-build='1']").await?.attr("data-state").await?;
    assert_eq!(running.as_deref(), Some("building"), "the log must be live while the build runs");
    browser.screenshot("20-build-running").await?;
    browser.wait_for("#builds tr[data-build='1'][data-state='succeeded']").await?;
    browser.wait_text("#build-log", "build 1 done: release 1 serves").await?;
    let (_, body) = get(server.ingress, &host("gitweb"), "/").await?;
    assert!(body.starts_with("hello from g1 "), "{body}");
    browser.screenshot("21-build-done").await?;

    // A failed build shows its error.
    repo.commit("g2", "COPY missing-file /x\n")?;
    let refused = repo.run(&["push", "berth", "main"]);
    assert!(refused.is_err(), "a broken build fails the push");
    browser.wait_for("#builds tr[data-build='2'][data-state='failed']").await?;
    browser.wait_text("#builds tr[data-build='2'] .build-message", "missing-file").await?;
    browser.wait_text("#build-log", "build 2 failed").await?;
    browser.screenshot("22-build-failed").await?;
    browser.close().await?;
    Ok(())
}

/// Waits up to 30 s until no element matches `css`.
async fn wait_gone(browser: &Browser, css: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let script = "return document.querySelector(arguments[0]) === null;";
        if browser.client().execute(script, vec![css.into()]).await? == json!(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = browser.screenshot("timeout-gone").await;
            anyhow::bail!("{css:?} is still on the page after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domains_panel_adds_and_removes_domains_and_saves_edge_settings() -> anyhow::Result<()> {
    ensure_dashboard_built()?;
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
    let api = server.api();
    let release = api
        .create_app(
            json!({ "name": "shop", "image": fixture.image_v1, "port": 8080, "replicas": 1, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving("shop", release).await?;
    let browser = Browser::start(&fixture.dir, "domains").await?;
    sign_in(&browser, &server, "admin@localhost", &password).await?;
    browser.goto(&format!("{base}/teams/main/apps/shop")).await?;
    browser.wait_hydrated().await?;
    // The app's own name is listed; this server has no ACME, so no name gets a certificate.
    browser.wait_for("#domains .domain-row[data-domain='shop.localhost'][data-state='none']").await?;
    browser.client().execute("document.querySelector('#domains-panel').scrollIntoView();", vec![]).await?;

    // A name that is not a domain is refused with the API's reason; nothing is added.
    browser.fill("#domain-name", "not a domain").await?;
    browser.click("#add-domain").await?;
    let refused = browser.wait_text("#domain-outcome", "is not a domain you can add").await?;
    println!("bad domain: {refused}");

    // Added: its row shows, without a certificate (state none: ACME is not configured).
    browser.fill("#domain-name", "shop.example.com").await?;
    browser.click("#add-domain").await?;
    browser.wait_text("#domain-outcome", "shop.example.com now serves the app").await?;
    let row = ".domain-row[data-domain='shop.example.com']";
    let state = browser.wait_for(row).await?.attr("data-state").await?;
    assert_eq!(state.as_deref(), Some("none"));
    browser.wait_text(row, "none").await?;

    // The edge settings: redirect off, HSTS for 600 s, saved with one button.
    let checked = browser.client().execute("return document.querySelector('#edge-redirect').checked;", vec![]).await?;
    assert_eq!(checked, json!(true), "redirecting to HTTPS is on by default");
    browser.click("#edge-redirect").await?;
    browser.fill("#edge-hsts", "600").await?;
    browser.click("#save-edge").await?;
    browser.wait_text("#edge-outcome", "HSTS max-age 600 s").await?;
    let (status, edge) = api.call(reqwest::Method::GET, "/shop/edge", None).await?;
    assert_eq!(status, 200, "{edge}");
    assert_eq!(edge["hsts_max_age"], json!(600), "{edge}");
    assert_eq!(edge["https_redirect"], json!(false), "{edge}");
    browser.screenshot("30-domain-added").await?;

    // Removing takes a second click; then the row goes.
    let remove = format!("{row} button.remove-domain");
    browser.click(&remove).await?;
    browser.wait_text(&remove, "Click again").await?;
    let (_, listed) = api.call(reqwest::Method::GET, "/shop/domains", None).await?;
    assert!(listed.to_string().contains("shop.example.com"), "one click removes nothing: {listed}");
    browser.click(&remove).await?;
    wait_gone(&browser, row).await?;
    browser.wait_text("#domain-outcome", "shop.example.com no longer serves the app").await?;
    let (_, listed) = api.call(reqwest::Method::GET, "/shop/domains", None).await?;
    assert!(!listed.to_string().contains("shop.example.com"), "{listed}");
    browser.screenshot("31-domain-removed").await?;

    // A viewer sees the names but may not add one: the API's refusal is shown.
    browser.click("#sign-out").await?;
    browser.wait_for("#sign-in").await?;
    let viewer_password = "a long enough password";
    invite(&server, "main", "viewer", "viewer@example.com", viewer_password).await?;
    sign_in(&browser, &server, "viewer@example.com", viewer_password).await?;
    browser.goto(&format!("{base}/teams/main/apps/shop")).await?;
    browser.wait_hydrated().await?;
    browser.wait_for("#domains .domain-row[data-domain='shop.localhost']").await?;
    browser.fill("#domain-name", "viewer.example.com").await?;
    browser.click("#add-domain").await?;
    let refused = browser.wait_text("#domain-outcome", "Not allowed").await?;
    println!("viewer adding a domain: {refused}");
    browser.client().execute("document.querySelector('#domains-panel').scrollIntoView();", vec![]).await?;
    browser.screenshot("32-viewer-cannot-add-domains").await?;
    let (_, listed) = api.call(reqwest::Method::GET, "/shop/domains", None).await?;
    assert!(!listed.to_string().contains("viewer.example.com"), "{listed}");
    browser.close().await?;
    Ok(())
}
