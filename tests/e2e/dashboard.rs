//! The dashboard as `berth server` serves it: rendered on the server, with the hydration scripts
//! pointing at the wasm build.

use berth_tests::Fixture;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_rendered_on_the_server() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let response = reqwest::get(format!("http://{}/signin", server.api)).await?;
    assert_eq!(response.status(), 200);
    let html = response.text().await?;
    // The page is complete before any script runs, and loads the hydration build.
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<title>Sign in · Berth</title>"), "{html}");
    assert!(html.contains("id=\"sign-in\""), "{html}");
    assert!(html.contains("/pkg/berth.js") && html.contains("/pkg/berth_bg.wasm"), "{html}");
    // Unknown API paths stay JSON errors; unknown pages are the dashboard's.
    let api = reqwest::get(format!("http://{}/api/v1/nope", server.api)).await?;
    assert_eq!(api.status(), 404);
    assert_eq!(api.json::<serde_json::Value>().await?["code"], "not_found");
    Ok(())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("BUG: a plain client builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_the_csrf_token_for_mutations() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let http = no_redirects();
    let password = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();

    // Pages need a session; the sign-in form says where to go back to.
    let page = http.get(format!("{base}/teams/main/apps")).send().await?;
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/signin?next=/teams/main/apps");

    // A sign-in posted from another site is refused outright; a wrong password goes back to the form.
    let foreign = http
        .post(format!("{base}/auth/signin"))
        .header("origin", "http://evil.example")
        .form(&[("email", "admin@localhost"), ("password", password.as_str())])
        .send()
        .await?;
    assert_eq!(foreign.status(), 403);
    assert!(foreign.headers().get("set-cookie").is_none());
    let wrong = http
        .post(format!("{base}/auth/signin"))
        .form(&[("email", "admin@localhost"), ("password", "wrong password!")])
        .send()
        .await?;
    assert_eq!(wrong.headers()["location"], "/signin?error=invalid");

    let cookie = server.sign_in("admin@localhost", &password).await?.expect("a session cookie");
    let page = http.get(format!("{base}/teams/main/apps")).header("cookie", &cookie).send().await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    let csrf = html.split("name=\"csrf-token\" content=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
    assert_eq!(csrf.len(), 64, "{html}");

    // Reads work with the cookie alone; a mutation without the token is refused and changes nothing.
    let me: serde_json::Value =
        http.get(format!("{base}/api/v1/me")).header("cookie", &cookie).send().await?.json().await?;
    assert_eq!(me["email"], "admin@localhost");
    let body = json!({ "name": "other" });
    let refused = http.post(format!("{base}/api/v1/teams")).header("cookie", &cookie).json(&body).send().await?;
    assert_eq!(refused.status(), 403);
    let forged =
        http.post(format!("{base}/api/v1/teams")).header("cookie", &cookie).header("x-csrf-token", "0".repeat(64));
    assert_eq!(forged.json(&body).send().await?.status(), 403);
    let (_, teams) = server.api().call(reqwest::Method::GET, "/api/v1/teams", None).await?;
    assert!(!teams.to_string().contains("other"), "{teams}");
    let allowed = http
        .post(format!("{base}/api/v1/teams"))
        .header("cookie", &cookie)
        .header("x-csrf-token", csrf)
        .json(&body)
        .send()
        .await?;
    assert_eq!(allowed.status(), 201);

    // Signing out needs the token too, then revokes the session server-side.
    let refused =
        http.post(format!("{base}/auth/signout")).header("cookie", &cookie).form(&[("csrf", "x")]).send().await?;
    assert_eq!(refused.status(), 403);
    let out =
        http.post(format!("{base}/auth/signout")).header("cookie", &cookie).form(&[("csrf", csrf)]).send().await?;
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
    let stale = http.get(format!("{base}/api/v1/me")).header("cookie", &cookie).send().await?;
    assert_eq!(stale.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_set_password_replaces_the_password_and_ends_sessions() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let base = format!("http://{}", server.api);
    let http = no_redirects();
    let old = std::fs::read_to_string(server.data_dir.join("admin.password"))?.trim().to_string();
    let cookie = server.sign_in("admin@localhost", &old).await?.expect("a session cookie");

    let run = |stdin: &str| -> anyhow::Result<std::process::Output> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(berth_tests::berth_binary()?)
            .args(["admin", "set-password", "admin@localhost", "--data-dir"])
            .arg(&server.data_dir)
            .args(fixture.database.iter().flat_map(|url| ["--database", url.as_str()]))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("BUG: piped").write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    };
    // Too short: refused, nothing changes.
    let short = run("short\n")?;
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least"), "{short:?}");
    assert!(server.sign_in("admin@localhost", &old).await?.is_some());

    let set = run("a brand new admin password\n")?;
    assert!(set.status.success(), "{set:?}");
    assert!(server.sign_in("admin@localhost", &old).await?.is_none());
    assert!(server.sign_in("admin@localhost", "a brand new admin password").await?.is_some());
    // The session from before is over.
    let stale = http.get(format!("{base}/api/v1/me")).header("cookie", &cookie).send().await?;
    assert_eq!(stale.status(), 401);
    Ok(())
}
