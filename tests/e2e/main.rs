//! End-to-end journeys against a real `berth server` process and the real Docker engine, with
//! images the tests build themselves. One module per journey.

mod api;
mod browser;
mod control_plane;
mod dashboard;
mod failures;
mod git_push;
mod healing;
mod hosts;
mod identity;
mod ingress_nodes;
mod release;
mod tenancy;
mod tls;

use berth_tests::{Fixture, Server};
use serde_json::json;

/// A fixture, a server, and the app `name` created from v1 with 2 replicas and serving.
async fn serving_app(name: &str) -> anyhow::Result<(Fixture, Server)> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let api = server.api();
    let release = api
        .create_app(
            json!({ "name": name, "image": fixture.image_v1, "port": 8080, "replicas": 2, "health_path": "/up" }),
        )
        .await?;
    api.wait_serving(name, release).await?;
    Ok((fixture, server))
}

fn host(name: &str) -> String {
    format!("{name}.localhost")
}
