//! Secret variables through the API: write-only for everyone, sealed in the store's files, moved
//! between plain and secret by name, resealed by a key rotation.

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::{Instance, instance};

const APPS: &str = "/api/v1/teams/main/apps";

/// Every byte the store has on disk (the database, its write-ahead log) and the key file. On
/// PostgreSQL, whose files are not the test's to read, every row it holds: copied into a new
/// SQLite file, whose bytes are read instead.
async fn disk(i: &Instance) -> (Vec<u8>, String) {
    let mut files = i.dir.0.path().to_path_buf();
    if i.store.engine() == "postgres" {
        files = tempfile::Builder::new().prefix("rows-").tempdir_in(i.dir.0.path()).unwrap().keep();
        let copy = berth_store::Store::open(&files).await.unwrap();
        i.store.copy_to(&copy).await.unwrap();
        copy.close().await;
    }
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&files).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.contains(".db") || name.contains("sqlite") {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    let keys = std::fs::read_to_string(i.dir.0.path().join("secrets.key")).unwrap();
    (bytes, keys)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn latest_spec(i: &Instance, token: &str) -> Value {
    let (status, app) = i.call(Method::GET, &format!("{APPS}/web"), Some(token), None).await;
    assert_eq!(status, 200, "{app}");
    app["releases"][0]["spec"].clone()
}

#[tokio::test]
async fn secrets_are_write_only_and_never_stored_in_plain() {
    let i = instance("secrets").await;
    let create = json!({
        "name": "web", "image": "hello:v1", "port": 8080,
        "env": { "MODE": "production" },
        "secrets": { "DB_PASSWORD": "correct-horse-battery-staple", "API_KEY": "sk_live_0123456789" },
    });
    let (status, body) = i.call(Method::POST, APPS, Some(&i.admin), Some(create)).await;
    assert_eq!(status, 201, "{body}");

    // Not even the instance admin gets a value back: the names say what is set.
    let spec = latest_spec(&i, &i.admin).await;
    assert_eq!(spec["secrets"], json!({ "API_KEY": "", "DB_PASSWORD": "" }), "{spec}");
    assert_eq!(spec["env"]["MODE"], "production");
    let viewer = i.join("main", "viewer@example.com", "viewer").await;
    let seen = latest_spec(&i, &viewer).await;
    assert_eq!(seen["secrets"], json!({ "API_KEY": "", "DB_PASSWORD": "" }));
    assert_eq!(seen["env"]["MODE"], "", "viewers see no env values");

    // Neither value is anywhere in the store's files.
    let (bytes, keys) = disk(&i).await;
    assert!(!bytes.is_empty(), "the store's files were found");
    assert!(!contains(&bytes, "correct-horse-battery-staple") && !contains(&bytes, "sk_live_0123456789"));
    assert!(contains(&bytes, "v1:k1:"), "sealed values are stored");
    assert_eq!(keys.lines().filter(|l| l.starts_with('k')).count(), 1);

    // Setting a name as plain moves it out of the secrets, and back; unset removes either.
    let deploy = format!("{APPS}/web/deploy");
    let (status, body) =
        i.call(Method::POST, &deploy, Some(&i.admin), Some(json!({ "env": { "API_KEY": "public" } }))).await;
    assert_eq!(status, 202, "{body}");
    let spec = latest_spec(&i, &i.admin).await;
    assert_eq!((spec["env"]["API_KEY"].as_str(), spec["secrets"].get("API_KEY")), (Some("public"), None), "{spec}");
    let (status, body) =
        i.call(Method::POST, &deploy, Some(&i.admin), Some(json!({ "secrets": { "MODE": "hidden" } }))).await;
    assert_eq!(status, 202, "{body}");
    let spec = latest_spec(&i, &i.admin).await;
    assert_eq!((spec["env"].get("MODE"), spec["secrets"]["MODE"].as_str()), (None, Some("")), "{spec}");
    let (status, body) =
        i.call(Method::POST, &deploy, Some(&i.admin), Some(json!({ "unset_env": ["DB_PASSWORD"] }))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(latest_spec(&i, &i.admin).await["secrets"], json!({ "MODE": "" }));

    // Bad input is refused with the field, and nothing is released.
    for bad in [
        json!({ "secrets": { "1BAD": "x" } }),
        json!({ "secrets": { "NUL": "a\u{0}b" } }),
        json!({ "secrets": { "BOTH": "x" }, "env": { "BOTH": "y" } }),
    ] {
        let (status, body) = i.call(Method::POST, &deploy, Some(&i.admin), Some(bad.clone())).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("secrets")), "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_key_rotation_reseals_every_value_and_retires_the_old_key() {
    let i = instance("rotation").await;
    let create = json!({ "name": "web", "image": "hello:v1", "port": 8080, "secrets": { "TOKEN": "t0ps3cret" } });
    assert_eq!(i.call(Method::POST, APPS, Some(&i.admin), Some(create)).await.0, 201);
    let deploy = format!("{APPS}/web/deploy");
    let (status, _) = i.call(Method::POST, &deploy, Some(&i.admin), Some(json!({ "secrets": { "OTHER": "x" } }))).await;
    assert_eq!(status, 202);
    let (old_bytes, old_keys) = disk(&i).await;
    assert!(contains(&old_bytes, "v1:k1:"));

    let member = i.join("main", "owner@example.com", "owner").await;
    let (status, body) = i.call(Method::POST, "/api/v1/secret-key/rotate", Some(&member), None).await;
    assert_eq!(status, 403, "only instance admins rotate: {body}");
    let (status, body) = i.call(Method::POST, "/api/v1/secret-key/rotate", Some(&i.admin), None).await;
    assert_eq!(status, 200, "{body}");
    // Release 1 carries TOKEN; release 2 carries TOKEN and OTHER.
    assert_eq!(body, json!({ "key_id": "k2", "resealed": 3, "unreadable": 0, "retired": ["k1"] }));

    let (bytes, keys) = disk(&i).await;
    let old_key = old_keys.lines().find(|l| l.starts_with("k1 ")).unwrap();
    assert!(!keys.contains(old_key), "the old key is gone from the key file");
    assert_eq!(keys.lines().filter(|l| l.starts_with('k')).count(), 1, "{keys}");
    assert!(keys.lines().any(|l| l.starts_with("k2 ")));
    assert!(contains(&bytes, "v1:k2:"));
    // Old pages of the database file may still hold the old ciphertext until SQLite reuses them;
    // no live row does.
    let spec = latest_spec(&i, &i.admin).await;
    assert_eq!(spec["secrets"], json!({ "OTHER": "", "TOKEN": "" }));
    // Values sealed after the rotation still go in.
    let (status, _) = i.call(Method::POST, &deploy, Some(&i.admin), Some(json!({ "secrets": { "NEW": "y" } }))).await;
    assert_eq!(status, 202);
    let (status, audit) = i.call(Method::GET, "/api/v1/audit", Some(&i.admin), None).await;
    assert_eq!(status, 200);
    assert!(audit.to_string().contains("rotate_secret_key"), "{audit}");
}
