//! The live streams are fed by the change feed: a write into the store that nothing in this
//! process announces (as another instance's write is) reaches the open streams, and a release's
//! stream (what `berth deploy` follows) ends once the release is finished.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use berth_wire::api::ReleaseState;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::{Instance, instance};

/// An open event stream, read event by event.
struct Events {
    body: axum::body::BodyDataStream,
    buffer: String,
}

impl Events {
    async fn open(i: &Instance, uri: &str) -> Events {
        Events::open_as(i, uri, &i.admin).await
    }

    async fn open_as(i: &Instance, uri: &str, token: &str) -> Events {
        let request = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream")
            .body(Body::empty())
            .unwrap();
        let response = i.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{uri}");
        Events { body: response.into_body().into_data_stream(), buffer: String::new() }
    }

    /// The next event's name and data (keep-alives skipped); `None` once the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let name = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                return Some((name, serde_json::from_str(data).expect("events carry JSON")));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")?
                .expect("the stream does not break");
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("events are UTF-8"));
        }
    }
}

#[tokio::test]
async fn writes_reach_the_open_streams_through_the_store_and_a_release_stream_ends_when_it_is_finished() {
    let i = instance("feed").await;
    let mut apps = Events::open(&i, "/api/v1/teams/main/watch/apps").await;
    assert_eq!(apps.next().await, Some(("apps".into(), json!([]))), "the first answer at once");

    // Written straight into the store, as another instance would: no call in this process says so.
    let team = i.store.team_id("main").await.unwrap().expect("team main");
    let spec = serde_json::from_value(json!({ "image": "web:1", "port": 8080, "replicas": 1 })).unwrap();
    let app = i.store.create_app(team, "elsewhere", &spec).await.unwrap();
    let (event, list) = apps.next().await.expect("the stream is open");
    assert_eq!((event.as_str(), list[0]["name"].as_str()), ("apps", Some("elsewhere")), "{list}");

    let mut release = Events::open(&i, "/api/v1/teams/main/apps/elsewhere/releases/1/watch").await;
    let (event, first) = release.next().await.expect("the release's first answer");
    assert_eq!((event.as_str(), &first["state"]), ("release", &json!("queued")), "{first}");
    let events = first["events"].as_array().map_or(0, Vec::len);
    let row = i.store.release(app, 1).await.unwrap().expect("release 1");
    i.store.add_release_event(row.id, "placing", "from elsewhere").await.unwrap();
    let (_, placing) = release.next().await.expect("the event's change");
    assert_eq!(placing["events"][events]["message"], "from elsewhere", "{placing}");
    i.store.set_release_state(row.id, ReleaseState::Failed, Some("given up elsewhere")).await.unwrap();
    let (_, failed) = release.next().await.expect("the finished release");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(release.next().await, None, "the stream ends after a finished release");

    // A release that does not exist is refused before any stream opens.
    let request = Request::builder()
        .uri("/api/v1/teams/main/apps/elsewhere/releases/9/watch")
        .header("authorization", format!("Bearer {}", i.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(i.router.clone().oneshot(request).await.unwrap().status(), 404);
}

/// An app's page is one view shared by its open streams, per environment visibility: a viewer
/// watching alongside a deployer never receives the environment's values.
#[tokio::test]
async fn a_viewer_and_an_owner_watching_one_app_see_it_as_each_may() {
    let i = instance("feed-env").await;
    let viewer = i.join("main", "viewer@example.com", "viewer").await;
    let team = i.store.team_id("main").await.unwrap().expect("team main");
    let spec = json!({ "image": "web:1", "port": 8080, "replicas": 1, "env": { "DB_PASSWORD": "hunter2" } });
    i.store.create_app(team, "shop", &serde_json::from_value(spec).unwrap()).await.unwrap();
    let mut owner = Events::open(&i, "/api/v1/teams/main/apps/shop/watch").await;
    let mut seen = Events::open_as(&i, "/api/v1/teams/main/apps/shop/watch", &viewer).await;
    // Each stream's first `app` event (a `metrics` event may come first).
    async fn detail(events: &mut Events) -> Value {
        loop {
            match events.next().await.expect("the stream is open") {
                (event, value) if event == "app" => return value,
                _ => {}
            }
        }
    }
    let (as_owner, as_viewer) = (detail(&mut owner).await, detail(&mut seen).await);
    assert_eq!(as_owner["releases"][0]["spec"]["env"]["DB_PASSWORD"], "hunter2", "{as_owner}");
    assert_eq!(as_viewer["releases"][0]["spec"]["env"]["DB_PASSWORD"], "", "{as_viewer}");
    assert_eq!(as_viewer["releases"][0]["env_hidden"], true, "{as_viewer}");

    // A change reaches both, each as before.
    let app = i.store.app(team, "shop").await.unwrap().expect("the app");
    let row = i.store.release(app.id, 1).await.unwrap().expect("release 1");
    i.store.add_release_event(row.id, "placing", "one more event").await.unwrap();
    let (as_owner, as_viewer) = (detail(&mut owner).await, detail(&mut seen).await);
    assert_eq!(as_owner["releases"][0]["spec"]["env"]["DB_PASSWORD"], "hunter2", "{as_owner}");
    assert_eq!(as_viewer["releases"][0]["spec"]["env"]["DB_PASSWORD"], "", "{as_viewer}");
}
