//! Team quotas and default container limits through the API.

use axum::http::Method;
use berth_api::services::ContainerDefaults;
use serde_json::json;

use crate::support::{instance, instance_with};

const APPS: &str = "/api/v1/teams/main/apps";
const QUOTA: &str = "/api/v1/teams/main/quota";

fn app(name: &str, replicas: u32, cpu: u32, memory: u64) -> serde_json::Value {
    json!({ "name": name, "image": "hello:v1", "port": 8080, "replicas": replicas, "cpu_millis": cpu, "memory_mb": memory })
}

#[tokio::test]
async fn a_quota_refuses_what_would_grow_past_it_with_the_reason_and_never_blocks_shrinking() {
    let i = instance("quota").await;
    let owner = i.join("main", "owner@example.com", "owner").await;
    // An app from before the quota, without limits: it may shrink under the quota, not grow.
    let old = json!({ "name": "old", "image": "hello:v1", "port": 8080, "replicas": 2 });
    assert_eq!(i.call(Method::POST, APPS, Some(&owner), Some(old)).await.0, 201);
    let quota = json!({ "replicas": 3, "cpu_millis": 1000, "memory_mb": 1024 });
    let (status, body) = i.call(Method::PUT, QUOTA, Some(&owner), Some(quota.clone())).await;
    assert_eq!(status, 403, "only instance admins set quotas: {body}");
    let (status, body) = i.call(Method::PUT, QUOTA, Some(&i.admin), Some(quota)).await;
    assert_eq!(status, 200, "{body}");

    let old_scale = format!("{APPS}/old/scale");
    let (status, body) = i.call(Method::POST, &old_scale, Some(&owner), Some(json!({ "replicas": 3 }))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("cpu_millis")), "{body}");
    let (status, body) = i.call(Method::POST, &old_scale, Some(&owner), Some(json!({ "replicas": 0 }))).await;
    assert_eq!(status, 202, "shrinking an app without limits is accepted: {body}");

    let (status, body) = i.call(Method::POST, APPS, Some(&owner), Some(app("a", 2, 250, 256))).await;
    assert_eq!(status, 201, "{body}");
    let (status, info) = i.call(Method::GET, QUOTA, Some(&owner), None).await;
    assert_eq!(status, 200);
    assert_eq!(info["used"], json!({ "replicas": 2, "cpu_millis": 500, "memory_mb": 512 }), "{info}");

    // Each limit, with what it allows and what the request would make.
    let refused =
        |body: serde_json::Value| (body["field"].as_str().unwrap_or("").to_string(), body["message"].to_string());
    let (status, body) = i.call(Method::POST, APPS, Some(&owner), Some(app("b", 2, 100, 100))).await;
    assert_eq!(status, 422, "{body}");
    let (field, message) = refused(body);
    assert_eq!(field, "replicas");
    assert!(
        message.contains("team main's quota allows 3 replicas; this would make 4 replicas (2 in its other apps)"),
        "{message}"
    );
    let (status, body) = i.call(Method::POST, APPS, Some(&owner), Some(app("b", 1, 600, 100))).await;
    assert_eq!((status, refused(body).0.as_str()), (422, "cpu_millis"));
    let (status, body) = i.call(Method::POST, APPS, Some(&owner), Some(app("b", 1, 100, 600))).await;
    assert_eq!((status, refused(body).0.as_str()), (422, "memory_mb"));
    // A quota on CPU needs every app to declare its CPU.
    let unlimited = json!({ "name": "b", "image": "hello:v1", "port": 8080, "memory_mb": 100 });
    let (status, body) = i.call(Method::POST, APPS, Some(&owner), Some(unlimited)).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("give the app a CPU limit"), "{body}");
    // Nothing refused was created.
    let (_, apps) = i.call(Method::GET, APPS, Some(&owner), None).await;
    assert_eq!(apps.as_array().map(Vec::len), Some(2), "old and a only: {apps}");

    // Scaling past it is refused too; within it, accepted.
    let scale = format!("{APPS}/a/scale");
    let (status, _) = i.call(Method::POST, &scale, Some(&owner), Some(json!({ "replicas": 4 }))).await;
    assert_eq!(status, 422);
    let (status, _) = i.call(Method::POST, &scale, Some(&owner), Some(json!({ "replicas": 3 }))).await;
    assert_eq!(status, 202);

    // A quota lowered below what runs refuses growth but never shrinking.
    let (status, _) = i.call(Method::PUT, QUOTA, Some(&i.admin), Some(json!({ "replicas": 1 }))).await;
    assert_eq!(status, 200);
    let (status, body) = i.call(Method::POST, &scale, Some(&owner), Some(json!({ "replicas": 2 }))).await;
    assert_eq!(status, 202, "shrinking from 3 to 2 is accepted over a quota of 1: {body}");
    let (status, _) = i.call(Method::POST, &scale, Some(&owner), Some(json!({ "replicas": 3 }))).await;
    assert_eq!(status, 422);
    let (status, body) =
        i.call(Method::POST, &format!("{APPS}/a/deploy"), Some(&owner), Some(json!({ "cpu_millis": 300 }))).await;
    assert_eq!(status, 202, "CPU has no limit any more: {body}");

    // Bad quotas are refused whole; an empty one is unlimited.
    let (status, _) = i.call(Method::PUT, QUOTA, Some(&i.admin), Some(json!({ "replicas": -1 }))).await;
    assert_eq!(status, 422);
    let (status, info) = i.call(Method::PUT, QUOTA, Some(&i.admin), Some(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(info["quota"], json!({ "replicas": null, "cpu_millis": null, "memory_mb": null }));
}

#[tokio::test]
async fn apps_without_limits_get_the_instance_defaults_and_keep_their_own() {
    let defaults = ContainerDefaults { cpu_millis: Some(250), memory_mb: Some(512) };
    let i = instance_with("defaults", defaults).await;
    let plain = json!({ "name": "plain", "image": "hello:v1", "port": 8080 });
    assert_eq!(i.call(Method::POST, APPS, Some(&i.admin), Some(plain)).await.0, 201);
    let (_, detail) = i.call(Method::GET, &format!("{APPS}/plain"), Some(&i.admin), None).await;
    let spec = &detail["releases"][0]["spec"];
    assert_eq!((spec["cpu_millis"].as_u64(), spec["memory_mb"].as_u64()), (Some(250), Some(512)), "{spec}");
    assert_eq!(i.call(Method::POST, APPS, Some(&i.admin), Some(app("own", 1, 2000, 64))).await.0, 201);
    let (_, detail) = i.call(Method::GET, &format!("{APPS}/own"), Some(&i.admin), None).await;
    let spec = &detail["releases"][0]["spec"];
    assert_eq!((spec["cpu_millis"].as_u64(), spec["memory_mb"].as_u64()), (Some(2000), Some(64)), "{spec}");
    // Without defaults (the other tests' instances), nothing is added.
    let bare = instance("no-defaults").await;
    let plain = json!({ "name": "plain", "image": "hello:v1", "port": 8080 });
    assert_eq!(bare.call(Method::POST, APPS, Some(&bare.admin), Some(plain)).await.0, 201);
    let (_, detail) = bare.call(Method::GET, &format!("{APPS}/plain"), Some(&bare.admin), None).await;
    assert_eq!(detail["releases"][0]["spec"]["cpu_millis"], serde_json::Value::Null);
}
