//! The dashboard as `berth server` serves it: rendered on the server, with the hydration scripts
//! pointing at the wasm build.

use berth_tests::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_rendered_on_the_server() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let response = reqwest::get(format!("http://{}/", server.api)).await?;
    assert_eq!(response.status(), 200);
    let html = response.text().await?;
    // The page is complete before any script runs, and loads the hydration build.
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<title>Berth</title>"), "{html}");
    assert!(html.contains("id=\"hydration-probe\""), "{html}");
    assert!(html.contains("/pkg/berth.js") && html.contains("/pkg/berth_bg.wasm"), "{html}");
    // Unknown API paths stay JSON errors; unknown pages are the dashboard's.
    let api = reqwest::get(format!("http://{}/api/v1/nope", server.api)).await?;
    assert_eq!(api.status(), 404);
    assert_eq!(api.json::<serde_json::Value>().await?["code"], "not_found");
    Ok(())
}
