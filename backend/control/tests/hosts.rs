//! What a host's agent may claim: only its own replicas, only the transfers it was asked for,
//! only the images it runs. Each check stands between one host's credential and the others'.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_control::{HostLink, HostLinks};
use berth_wire::agent::{ContainerPhase, DesiredContainer, ObservedContainer};
use futures::StreamExt as _;

fn desired(replica: &str, image: &str) -> DesiredContainer {
    DesiredContainer {
        replica_id: replica.into(),
        team: "main".into(),
        app: "web".into(),
        release: 1,
        image: image.into(),
        port: 8080,
        env: BTreeMap::new(),
        health_path: None,
        cpu_millis: None,
        memory_mb: None,
        stop_grace_secs: 1,
        privileges: Default::default(),
    }
}

fn ready(replica: &str, endpoint: &str) -> (String, ObservedContainer) {
    let observed = ObservedContainer {
        replica_id: replica.into(),
        container_id: Some(format!("c-{replica}")),
        phase: ContainerPhase::Ready,
        endpoint: Some(endpoint.into()),
        restarts: 0,
        message: None,
        started_at: None,
        usage: None,
    };
    (replica.to_string(), observed)
}

async fn union_settles(links: &HostLinks, want: &[(&str, &str)]) {
    let mut observed = links.observed();
    let want: BTreeMap<String, String> = want.iter().map(|(r, e)| (r.to_string(), e.to_string())).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let now: BTreeMap<String, String> = observed
            .borrow_and_update()
            .iter()
            .map(|(id, o)| (id.clone(), o.endpoint.clone().unwrap_or_default()))
            .collect();
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "observed {now:?}, want {want:?}");
        let _ = tokio::time::timeout(Duration::from_millis(50), observed.changed()).await;
    }
}

#[tokio::test]
async fn a_host_reports_only_on_replicas_placed_on_it() {
    let links = HostLinks::default();
    let (h1, h2) = (links.link("h1"), links.link("h2"));
    h1.set_desired(vec![desired("r1", "web:1")]);
    h2.set_desired(vec![desired("r2", "web:1")]);
    // h2 claims h1's replica, pointed at the control plane's own API: not believed.
    h2.report([ready("r1", "127.0.0.1:7878"), ready("r2", "10.0.0.2:32001")].into());
    union_settles(&links, &[("r2", "10.0.0.2:32001")]).await;
    h1.report([ready("r1", "10.0.0.1:32000")].into());
    union_settles(&links, &[("r1", "10.0.0.1:32000"), ("r2", "10.0.0.2:32001")]).await;
    // A replica leaving h1's list is still believed while h1 reports it (it is being stopped)...
    h1.set_desired(Vec::new());
    h1.report([ready("r1", "10.0.0.1:32000")].into());
    union_settles(&links, &[("r1", "10.0.0.1:32000"), ("r2", "10.0.0.2:32001")]).await;
    // ... and once gone from h1's reports, h1 cannot bring it back.
    h1.report(Default::default());
    h1.report([ready("r1", "10.0.0.1:32000")].into());
    union_settles(&links, &[("r2", "10.0.0.2:32001")]).await;
}

#[tokio::test]
async fn a_report_that_came_before_the_desired_list_counts_once_the_list_does() {
    let links = HostLinks::default();
    let h1 = links.link("h1");
    h1.report([ready("r1", "10.0.0.1:32000")].into());
    union_settles(&links, &[]).await;
    h1.set_desired(vec![desired("r1", "web:1")]);
    union_settles(&links, &[("r1", "10.0.0.1:32000")]).await;
}

#[tokio::test]
async fn only_the_hosts_asked_may_answer_a_transfer_each_once() {
    let links = HostLinks::default();
    let relay = links.relay();
    let mut transfer = relay.open();
    let id = transfer.id.clone();
    assert!(transfer.ask("h1", || true));
    assert!(transfer.ask("h2", || true));
    let stream = || futures::stream::iter([Ok(bytes::Bytes::from_static(b"archive"))]).boxed();
    // h3 was not asked: its upload and its "unavailable" are refused.
    assert!(relay.deliver(&id, "h3", stream()).await.is_err(), "a host not asked cannot answer");
    relay.unavailable(&id, "h3");
    // h2 says no twice: it counts once, so the transfer still waits for h1.
    relay.unavailable(&id, "h2");
    relay.unavailable(&id, "h2");
    let reader = async move {
        let mut upload = transfer.first_upload(Duration::from_secs(5)).await.expect("h1's upload");
        let mut bytes = Vec::new();
        while let Some(chunk) = upload.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        bytes
    };
    let (read, delivered) = tokio::join!(reader, relay.deliver(&id, "h1", stream()));
    delivered.expect("h1 was asked");
    assert_eq!(read, b"archive");
}

#[tokio::test]
async fn an_image_is_shipped_only_to_a_host_that_runs_it() {
    let links = HostLinks::default();
    let h1: Arc<HostLink> = links.link("h1");
    let error = berth_control::images::fetch(&links, "h1", "berth/other-team/app:1").await.err().expect("refused");
    assert!(format!("{error:#}").contains("runs no container of image"), "{error:#}");
    let built = "berth/main/web:0123456789ab-1";
    h1.set_desired(vec![desired("r1", built)]);
    // h2 neither runs nor built it: it is not asked (a host's credential cannot supply images
    // Berth built for a team).
    let h2 = links.link("h2");
    let mut commands = h2.open_commands();
    let error = berth_control::images::fetch(&links, "h1", built).await.err().expect("nobody has it");
    assert!(format!("{error:#}").contains("(0 connected host(s) asked)"), "{error:#}");
    assert!(commands.try_recv().is_err(), "h2 was not asked");
    // h2 built it: now it is asked.
    links.note_image_origin(built, "h2");
    let fetch = berth_control::images::fetch(&links, "h1", built);
    let answer = async {
        let Some(berth_wire::agent::ControlMessage::ExportImage { transfer, image }) = commands.recv().await else {
            panic!("h2 is asked for the image");
        };
        assert_eq!(image, built);
        links.relay().unavailable(&transfer, "h2");
    };
    let (result, ()) = tokio::join!(fetch, answer);
    let error = result.err().expect("h2 said it does not have it");
    assert!(format!("{error:#}").contains("(1 connected host(s) asked)"), "{error:#}");
}
