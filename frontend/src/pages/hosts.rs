//! The hosts, their capacity and what runs on them (instance admins).

use berth_wire::api::{HostInfo, HostState};
use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{self, ApiError};
use crate::ui::{ErrorNote, format_time};

#[component]
pub fn HostsPage() -> impl IntoView {
    let hosts = Resource::new(|| (), |_| api::get::<Vec<HostInfo>>("/api/v1/hosts"));
    let live: RwSignal<Option<Vec<HostInfo>>> = RwSignal::new(None);
    let outcome: RwSignal<Option<Result<String, ApiError>>> = RwSignal::new(None);
    Effect::new(move |_| {
        api::subscribe("/api/v1/watch/hosts".into(), &["hosts"], move |_, data| {
            if let Ok(list) = serde_json::from_str(&data) {
                live.set(Some(list));
            }
        });
    });
    let drain = move |name: String| {
        leptos::task::spawn_local(async move {
            let result = api::post::<_, HostInfo>(format!("/api/v1/hosts/{name}/drain"), &serde_json::json!({})).await;
            outcome.set(Some(result.map(|h| format!("{} is {}", h.name, h.state.as_str()))));
        });
    };
    view! {
        <Title text="Hosts · Berth"/>
        <h1>"Hosts"</h1>
        {move || outcome.get().map(|o| match o {
            Ok(message) => view! { <p class="notice" role="status">{message}</p> }.into_any(),
            Err(error) => view! { <ErrorNote error/> }.into_any(),
        })}
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let initial = hosts.await;
                view! {
                    {move || match live.get().map(Ok).unwrap_or_else(|| initial.clone()) {
                        Err(error) => view! { <ErrorNote error/> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="empty">"No hosts have joined yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <ul class="cards" id="hosts">
                                {list.into_iter().map(|h| {
                                    let name = h.name.clone();
                                    let state_class = match h.state { HostState::Up => "ok", HostState::Draining => "warn", HostState::Down => "bad" };
                                    let cpu = percent(h.allocated.cpu_millis, h.capacity.cpu_millis);
                                    let memory = percent(h.allocated.memory_mb, h.capacity.memory_mb);
                                    view! {
                                        <li class="card host" data-host=h.name.clone()>
                                            <div class="title-row">
                                                <h2>{h.name.clone()}{h.local.then_some(" (this server)")}</h2>
                                                <span class=format!("badge {state_class}")>{h.state.as_str()}</span>
                                            </div>
                                            <p class="muted small">{h.address.clone()}" · last seen "{h.last_seen.map_or("never".into(), format_time)}</p>
                                            <p>{h.labels.iter().map(|(k, v)| view! { <span class="badge">{format!("{k}={v}")}</span>" " }).collect_view()}</p>
                                            <Meter label="CPU reserved" used=format!("{} of {} millicores", h.allocated.cpu_millis, h.capacity.cpu_millis) fraction=cpu/>
                                            <Meter label="Memory reserved" used=format!("{} of {} MB", h.allocated.memory_mb, h.capacity.memory_mb) fraction=memory/>
                                            <h3>{format!("{} replica(s)", h.replicas.len())}</h3>
                                            <ul class="plain">
                                                {h.replicas.into_iter().map(|r| view! {
                                                    <li><a href=format!("/teams/{}/apps/{}", r.team, r.app)>{format!("{}/{}", r.team, r.app)}</a>
                                                        {format!(" #{} · {:?}", r.release, r.phase).to_lowercase()}</li>
                                                }).collect_view()}
                                            </ul>
                                            {(h.state == HostState::Up).then(|| view! {
                                                <button type="button" class="small" on:click=move |_| drain(name.clone())>"Drain"</button>
                                            })}
                                        </li>
                                    }
                                }).collect_view()}
                            </ul>
                        }.into_any(),
                    }}
                }
            })}
        </Suspense>
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { (used as f64 / total as f64).min(1.0) }
}

#[component]
fn Meter(label: &'static str, used: String, fraction: f64) -> impl IntoView {
    view! {
        <div class="meter">
            <span class="small">{label}": "{used}</span>
            <svg viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label=format!("{label}: {:.0}%", fraction * 100.0)>
                <rect x="0" y="0" width="100" height="6" class="track"/>
                <rect x="0" y="0" width=format!("{:.1}", fraction * 100.0) height="6" class="fill"/>
            </svg>
        </div>
    }
}
