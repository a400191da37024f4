//! `berth admin migrate-store`'s copy: SQLite to PostgreSQL and back, every row kept, and the
//! copies usable afterwards.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_store::{AuditRecord, Database, NewBuild, NewCertificate, Store};
use berth_wire::AppSpec;
use berth_wire::agent::HostCapacity;
use berth_wire::builds::{BuildState, WebhookProvider};
use berth_wire::edge::{CertSource, EdgeSettings};

fn spec(image: &str) -> AppSpec {
    AppSpec {
        image: image.into(),
        port: 8080,
        replicas: 2,
        env: BTreeMap::from([("GREETING".into(), "hello, \"world\" ✓".into())]),
        secrets: BTreeMap::from([("TOKEN".into(), "sealed:abc".into())]),
        health_path: Some("/health".into()),
        cpu_millis: Some(250),
        memory_mb: Some(128),
        constraints: BTreeMap::from([("zone".into(), "a".into())]),
        privileges: Default::default(),
        protocol: Default::default(),
    }
}

/// A store with a row in every table the API can reach.
async fn populate(store: &Store) {
    assert!(store.bootstrap("bootstrap-token-hash", "password-hash").await.unwrap());
    let team = store.team_id("main").await.unwrap().unwrap();
    let dev = store.create_user("dev@example.com", "Dev", "dev-hash").await.unwrap();
    store.set_membership(team, dev, "deployer").await.unwrap();
    store.set_user_disabled(dev, true).await.unwrap();
    let other = store.create_team("other", dev).await.unwrap();
    store
        .set_team_quota(
            other,
            &berth_wire::api::TeamQuota { replicas: Some(4), cpu_millis: None, memory_mb: Some(512) },
        )
        .await
        .unwrap();
    store
        .create_token("team-token-hash", "ci", dev, "team", Some(team), Some("deployer"), Some(9_999_999_999_999))
        .await
        .unwrap();
    store
        .create_invitation("invite-hash", team, "viewer", Some("new@example.com"), 1, 9_999_999_999_999)
        .await
        .unwrap();
    store.link_external(dev, "https://idp.example.com", "subject-1").await.unwrap();
    // Stamps the token's last use now, not during a snapshot.
    store.token("team-token-hash").await.unwrap();
    store.record_failed_login("admin@localhost", "192.0.2.1", 1_000, |failures| failures * 1_000).await.unwrap();

    let capacity = HostCapacity { cpu_millis: 4_000, memory_mb: 8_192 };
    store.register_local_host("local", "127.0.0.1", &capacity).await.unwrap();
    store.create_join_token("join-hash", 2, 9_999_999_999_999, 1, "host").await.unwrap();
    store.create_join_token("ingress-join-hash", 1, 9_999_999_999_999, 1, "ingress").await.unwrap();
    let labels = BTreeMap::from([("zone".to_string(), "b".to_string())]);
    store.join_host("join-hash", "h2", "10.0.0.2", &labels, &capacity, "credential-hash").await.unwrap();
    store.join_ingress_node("ingress-join-hash", "edge-1", "edge-credential-hash").await.unwrap();

    let web = store.create_app(team, "web", &spec("web:1")).await.unwrap();
    store.create_release(web, &spec("web:2"), Some(1)).await.unwrap();
    let first = store.release(web, 1).await.unwrap().unwrap();
    store.set_release_state(first.id, berth_wire::api::ReleaseState::Serving, Some("ready")).await.unwrap();
    store.switch_serving(web, &first).await.unwrap();
    store.add_release_event(first.id, "ready", "2 of 2 replicas ready").await.unwrap();
    store.insert_replica("r-1", web, first.id, "local").await.unwrap();
    store.insert_replica("r-2", web, first.id, "h2").await.unwrap();
    store.replace_leaving("r-2", "r-3", "local").await.unwrap();
    store.mark_retiring(&["r-1".to_string()]).await.unwrap();
    store.add_domain(web, "www.example.com").await.unwrap();
    store.set_edge_settings(web, &EdgeSettings { https_redirect: Some(false), hsts_max_age: Some(600) }).await.unwrap();
    store.set_acme_name("www.example.com", "failed", Some("rate limited"), 3, 12_345).await.unwrap();
    let names = ["www.example.com".to_string()];
    store
        .insert_certificate(NewCertificate {
            app_id: web,
            source: CertSource::Uploaded,
            names: &names,
            issuer: "CN=Test CA",
            chain_pem: "-----BEGIN CERTIFICATE-----\n...",
            key_file: "key-1.pem",
            not_after: 1_900_000_000_000,
        })
        .await
        .unwrap();

    let built = store.create_app(other, "built", &spec("")).await.unwrap();
    let build = NewBuild {
        app_id: built,
        commit: "0123456789abcdef0123456789abcdef01234567",
        git_ref: "refs/heads/main",
        pusher: "dev",
        trigger: "webhook",
        image_template: "berth/other/built:{build}",
    };
    let berth_store::BuildInsert::Created(row) = store.insert_build(build).await.unwrap() else { panic!("busy") };
    store.start_build(row.id, "local").await.unwrap();
    store.finish_build(row.id, BuildState::Failed, Some("exit 1")).await.unwrap();
    store.create_webhook("hook-1", built, WebhookProvider::Github, "org/repo", "hook-secret").await.unwrap();
    store.add_delivery("hook-1", Some("delivery-1"), "accepted", "push to main", Some(1)).await.unwrap();
    store.mark_deleting(built).await.unwrap();
    store
        .audit(AuditRecord {
            user_id: Some(1),
            actor: "admin@localhost".into(),
            action: "app.create".into(),
            team_id: Some(team),
            team: Some("main".into()),
            app: Some("web".into()),
            outcome: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Everything the store's API shows, as text.
async fn snapshot(store: &Store) -> String {
    let mut out = String::new();
    let users = store.users().await.unwrap();
    writeln!(out, "{users:?}").unwrap();
    for user in &users {
        writeln!(out, "{:?}", store.memberships(user.id).await.unwrap()).unwrap();
        writeln!(out, "{:?}", store.tokens_of_user(user.id).await.unwrap()).unwrap();
        writeln!(out, "{:?}", store.external_subject(user.id, "https://idp.example.com").await.unwrap()).unwrap();
    }
    for team in ["main", "other"] {
        let id = store.team_id(team).await.unwrap().unwrap();
        writeln!(out, "{:?} {:?}", store.members(id).await.unwrap(), store.team_quota(id).await.unwrap()).unwrap();
    }
    writeln!(out, "{:?}", store.invitation("invite-hash").await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.token("team-token-hash").await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.login_blocked_until("admin@localhost", "192.0.2.1").await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.hosts().await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.host_by_credential("credential-hash").await.unwrap()).unwrap();
    for app in store.all_apps().await.unwrap() {
        writeln!(out, "{app:?}").unwrap();
        for release in store.releases(app.id).await.unwrap() {
            writeln!(out, "{release:?} {:?}", store.release_events(release.id).await.unwrap()).unwrap();
        }
        writeln!(out, "{:?}", store.replicas_of_app(app.id).await.unwrap()).unwrap();
        writeln!(out, "{:?} {:?}", store.domains(app.id).await.unwrap(), store.edge_settings(app.id).await.unwrap())
            .unwrap();
        writeln!(out, "{:?}", store.build_settings(app.id).await.unwrap()).unwrap();
        writeln!(out, "{:?}", store.base_spec(app.id).await.unwrap()).unwrap();
        writeln!(out, "{:?}", store.builds(app.id, 100).await.unwrap()).unwrap();
        writeln!(out, "{:?} {:?}", store.webhooks(app.id).await.unwrap(), store.deliveries(app.id).await.unwrap())
            .unwrap();
    }
    writeln!(out, "{:?}", store.certificates().await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.acme_names().await.unwrap()).unwrap();
    writeln!(out, "{:?}", store.audit_entries(None, 1000).await.unwrap()).unwrap();
    out
}

#[tokio::test]
async fn a_store_copies_to_postgresql_and_back_whole_and_both_copies_take_new_rows() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let sqlite = Store::open(dir.path()).await.unwrap();
    populate(&sqlite).await;
    let original = snapshot(&sqlite).await;
    assert!(original.contains("r-3") && original.contains("www.example.com"), "{original}");

    let Some(url) = berth_testdb::fresh_database().expect("starting the test PostgreSQL") else { return };
    let postgres = Store::connect(&Database::Postgres(url)).await.unwrap();
    let report = sqlite.copy_to(&postgres).await.unwrap();
    let rows: u64 = report.tables.iter().map(|(_, rows)| rows).sum();
    assert!(report.tables.iter().all(|(_, rows)| *rows > 0), "a row in every table: {report:?}");
    assert_eq!(snapshot(&postgres).await, original, "PostgreSQL holds what SQLite held");

    // New rows get new ids (the identity sequences moved past the copied ones) and numbers.
    let team = postgres.team_id("main").await.unwrap().unwrap();
    let web = postgres.app(team, "web").await.unwrap().unwrap();
    assert_eq!(postgres.create_release(web.id, &spec("web:3"), None).await.unwrap(), 3);
    let user = postgres.create_user("third@example.com", "Third", "hash").await.unwrap();
    assert_eq!(user, 3, "ids continue after the copied ones");

    // A store that holds data is not a target: nothing is written into it.
    let refused = sqlite.copy_to(&postgres).await.unwrap_err();
    assert!(format!("{refused:#}").contains("already holds data"), "{refused:#}");

    // And back, into a new SQLite file.
    let back_dir = tempfile::tempdir().expect("a scratch directory");
    let back = Store::open(back_dir.path()).await.unwrap();
    let report = postgres.copy_to(&back).await.unwrap();
    assert_eq!(report.tables.iter().map(|(_, rows)| rows).sum::<u64>(), rows + 3, "the release, its event, the user");
    assert_eq!(snapshot(&back).await, snapshot(&postgres).await, "SQLite holds what PostgreSQL held");
    assert_eq!(back.create_release(web.id, &spec("web:4"), None).await.unwrap(), 4);
}
