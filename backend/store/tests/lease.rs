//! The leadership lease and its fence, on SQLite and on PostgreSQL, with two store handles on one
//! database standing for two control-plane instances.

mod common;

use std::time::Duration;

use berth_store::{Store, is_fenced};
use common::spec;

// Long enough that a loaded machine does not lose a lease between two calls of the test.
const TTL: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_leader_paused_past_its_lease_writes_nothing_once_another_took_over() {
    common::with_two_handles_on_each_engine(paused_leader).await;
}

async fn paused_leader((a, b): (Store, Store)) {
    let engine = a.engine();
    a.bootstrap("token", "password").await.unwrap();
    let team = a.team_id("main").await.unwrap().unwrap();
    let app = a.create_app(team, "web", &spec("web:1")).await.unwrap();

    let term_a = a.acquire_lease("a", "http://a:7878", TTL).await.unwrap().expect("a free lease is taken");
    assert_eq!(term_a, 1, "{engine}");
    assert_eq!(b.acquire_lease("b", "http://b:7878", TTL).await.unwrap(), None, "{engine}: held by a");
    assert!(a.renew_lease("a", term_a, TTL).await.unwrap(), "{engine}");
    let lease = b.lease().await.unwrap();
    assert_eq!((lease.holder.as_str(), lease.address.as_str(), lease.term), ("a", "http://a:7878", 1), "{engine}");
    assert!(lease.expires_in_ms > 0 && lease.expires_in_ms <= TTL.as_millis() as i64, "{engine}: {lease:?}");

    // The leader's handle writes while its term holds the lease.
    let leader_a = a.fenced("a", term_a);
    leader_a.add_release_event(1, "note", "written by a").await.unwrap();

    // a stops renewing (paused); once the lease expires, b takes it in a new term.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    // Expired, even before anyone took it over, the lease fences a's writes.
    let refused = leader_a.add_release_event(1, "note", "written by a after its lease ran out").await.unwrap_err();
    assert!(is_fenced(&refused), "{engine}: {refused}");
    let term_b = b.acquire_lease("b", "http://b:7878", TTL).await.unwrap().expect("an expired lease is taken");
    assert_eq!(term_b, 2, "{engine}");

    // a resumes: every write of its handle is refused, and none lands.
    let refused = leader_a.add_release_event(1, "note", "written by a after losing the lease").await.unwrap_err();
    assert!(is_fenced(&refused), "{engine}: {refused}");
    assert!(refused.to_string().contains("no longer the leader"), "{refused}");
    let refused = leader_a.create_release(app, &spec("web:1"), None).await.unwrap_err();
    assert!(is_fenced(&refused), "{engine}: {refused}");
    let refused = leader_a.set_release_state(1, berth_wire::api::ReleaseState::Failed, Some("late")).await;
    assert!(refused.is_err_and(|e| is_fenced(&e)), "{engine}");
    let events: Vec<String> = b.release_events(1).await.unwrap().into_iter().map(|e| e.message).collect();
    assert!(events.contains(&"written by a".to_string()), "{engine}: {events:?}");
    assert!(!events.iter().any(|m| m.contains("after losing")), "{engine}: {events:?}");
    assert_eq!(b.releases(app).await.unwrap().len(), 1, "{engine}: no release was added");
    assert_eq!(b.release(app, 1).await.unwrap().unwrap().state(), berth_wire::api::ReleaseState::Queued);
    assert!(!a.renew_lease("a", term_a, TTL).await.unwrap(), "{engine}: a's term is over");

    // b's handle writes; a clean stop gives the lease up at once.
    b.fenced("b", term_b).add_release_event(1, "note", "written by b").await.unwrap();
    b.release_lease("b", term_b).await.unwrap();
    assert_eq!(a.acquire_lease("a", "http://a:7878", TTL).await.unwrap(), Some(3), "{engine}");
    assert!(is_fenced(&b.fenced("b", term_b).add_release_event(1, "note", "late b").await.unwrap_err()));

    // Renewing one's own live lease keeps the term; taking it back once expired does not, even
    // under the same name (another process may carry it): the old handle is fenced.
    assert_eq!(a.acquire_lease("a", "http://a:7878", TTL).await.unwrap(), Some(3), "{engine}");
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(a.acquire_lease("a", "http://a:7878", TTL).await.unwrap(), Some(4), "{engine}");
    assert!(is_fenced(&a.fenced("a", 3).add_release_event(1, "note", "term 3").await.unwrap_err()), "{engine}");
    a.fenced("a", 4).add_release_event(1, "note", "term 4").await.unwrap();
}
