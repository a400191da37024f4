//! The team's apps, live, and the form that creates one.

use std::collections::BTreeMap;

use berth_wire::api::{AppSummary, CreateApp, ReleaseAccepted};
use berth_wire::edge::AppProtocol;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_navigate, use_params_map};

use crate::api::{self, ApiError};
use crate::ui::ErrorNote;

pub fn team_param() -> Memo<String> {
    let params = use_params_map();
    Memo::new(move |_| params.read().get("team").unwrap_or_default())
}

#[component]
pub fn AppsPage() -> impl IntoView {
    let team = team_param();
    let apps =
        Resource::new(move || team.get(), |team| api::get::<Vec<AppSummary>>(format!("/api/v1/teams/{team}/apps")));
    let live: RwSignal<Option<Vec<AppSummary>>> = RwSignal::new(None);
    Effect::new(move |_| {
        let team = team.get();
        live.set(None);
        api::subscribe(format!("/api/v1/teams/{team}/watch/apps"), &["apps"], move |_, data| {
            if let Ok(list) = serde_json::from_str(&data) {
                live.set(Some(list));
            }
        });
    });
    view! {
        <Title text=move || format!("Apps · {} · Berth", team.get())/>
        <div class="title-row">
            <h1>"Apps"</h1>
            <TeamTabs/>
            <a class="button primary" id="new-app" href=move || format!("/teams/{}/apps/new", team.get())>"New app"</a>
        </div>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let initial = apps.await;
                view! {
                    {move || match live.get().map(Ok).unwrap_or_else(|| initial.clone()) {
                        Err(error) => view! { <ErrorNote error/> }.into_any(),
                        Ok(list) if list.is_empty() => view! {
                            <p class="empty">"No apps yet. "
                                <a href=format!("/teams/{}/apps/new", team.get_untracked())>"Create the first one"</a>"."</p>
                        }.into_any(),
                        Ok(list) => view! { <AppsTable apps=list/> }.into_any(),
                    }}
                }
            })}
        </Suspense>
    }
}

/// Links to the team's other sections.
#[component]
pub fn TeamTabs() -> impl IntoView {
    let team = team_param();
    view! {
        <nav class="tabs" aria-label="Team">
            <a href=move || format!("/teams/{}/apps", team.get())>"Apps"</a>
            <a href=move || format!("/teams/{}/members", team.get())>"Members"</a>
            <a href=move || format!("/teams/{}/audit", team.get())>"Audit log"</a>
        </nav>
    }
}

#[component]
fn AppsTable(apps: Vec<AppSummary>) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table id="apps">
                <thead><tr><th>"App"</th><th>"Replicas"</th><th>"Release"</th><th>"Image"</th><th>"URL"</th></tr></thead>
                <tbody>
                    {apps.into_iter().map(|app| {
                        let healthy = app.replicas_ready >= app.replicas_desired && app.replicas_desired > 0;
                        let state = if healthy { "ok" } else if app.replicas_ready > 0 { "warn" } else { "bad" };
                        view! {
                            <tr data-app=app.name.clone()>
                                <td><a href=format!("/teams/{}/apps/{}", app.team, app.name)><strong>{app.name.clone()}</strong></a></td>
                                <td><span class=format!("badge {state}") data-role="replicas">{format!("{} / {} ready", app.replicas_ready, app.replicas_desired)}</span></td>
                                <td>{app.serving_release.map_or("none yet".to_string(), |r| format!("#{r}"))}</td>
                                <td><code>{app.image}</code></td>
                                <td><a href=app.url.clone() target="_blank" rel="noopener">{app.url.clone()}</a></td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// `KEY=VALUE` lines to a map, or the first line that is not one.
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                env.insert(key.trim().to_string(), value.to_string());
            }
            _ => return Err(format!("line {} is not KEY=VALUE: {line}", number + 1)),
        }
    }
    Ok(env)
}

fn parse_number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ApiError {
        status: 422,
        code: "validation".into(),
        message: format!("{text:?} is not a whole number"),
        field: Some(field.into()),
    })
}

#[component]
pub fn NewAppPage() -> impl IntoView {
    let team = team_param();
    let name = RwSignal::new(String::new());
    let image = RwSignal::new(String::new());
    let port = RwSignal::new("8080".to_string());
    let replicas = RwSignal::new("1".to_string());
    let health_path = RwSignal::new(String::new());
    let cpu = RwSignal::new(String::new());
    let memory = RwSignal::new(String::new());
    let env = RwSignal::new(String::new());
    let h2c = RwSignal::new(false);
    let error: RwSignal<Option<ApiError>> = RwSignal::new(None);
    let busy = RwSignal::new(false);
    let navigate = use_navigate();

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let input = (|| -> Result<CreateApp, ApiError> {
            let env = parse_env(&env.get_untracked()).map_err(|message| ApiError {
                status: 422,
                code: "validation".into(),
                message,
                field: Some("env".into()),
            })?;
            Ok(CreateApp {
                name: name.get_untracked().trim().to_string(),
                image: image.get_untracked().trim().to_string(),
                port: parse_number("port", &port.get_untracked())?.unwrap_or(0),
                replicas: parse_number("replicas", &replicas.get_untracked())?,
                env,
                secrets: BTreeMap::new(),
                health_path: Some(health_path.get_untracked().trim().to_string()).filter(|p| !p.is_empty()),
                cpu_millis: parse_number("cpu_millis", &cpu.get_untracked())?,
                memory_mb: parse_number("memory_mb", &memory.get_untracked())?,
                constraints: BTreeMap::new(),
                privileges: Default::default(),
                protocol: if h2c.get_untracked() { AppProtocol::H2c } else { AppProtocol::Http1 },
            })
        })();
        let input = match input {
            Ok(input) => input,
            Err(e) => return error.set(Some(e)),
        };
        busy.set(true);
        let navigate = navigate.clone();
        let team = team.get_untracked();
        leptos::task::spawn_local(async move {
            match api::post::<_, ReleaseAccepted>(format!("/api/v1/teams/{team}/apps"), &input).await {
                Ok(accepted) => navigate(&format!("/teams/{team}/apps/{}", accepted.app), Default::default()),
                Err(e) => {
                    error.set(Some(e));
                    busy.set(false);
                }
            }
        });
    };

    let field_error = move |field: &'static str| {
        move || {
            error
                .get()
                .and_then(|e| e.for_field(field))
                .map(|m| view! { <p class="field-error" id=format!("{field}-error")>{m}</p> })
        }
    };
    let other_error = move || {
        error
            .get()
            .filter(|e| e.field.is_none() || e.field.as_deref() == Some("body"))
            .map(|error| view! { <ErrorNote error/> })
    };
    view! {
        <Title text="New app · Berth"/>
        <h1>"New app"</h1>
        <form class="panel stack" on:submit=submit id="create-app" novalidate>
            {other_error}
            <label for="name">"Name"</label>
            <input id="name" bind:value=name required placeholder="web" aria-describedby="name-help"/>
            <p class="help" id="name-help">"A DNS label: lowercase letters, digits and dashes. The app is served at "<code>"http://NAME.<base domain>"</code>"."</p>
            {field_error("name")}
            <label for="image">"Image"</label>
            <input id="image" bind:value=image required placeholder="registry.example/web:1.2"/>
            {field_error("image")}
            <div class="row">
                <div class="stack">
                    <label for="port">"Container port"</label>
                    <input id="port" type="number" min="1" max="65535" bind:value=port/>
                    {field_error("port")}
                </div>
                <div class="stack">
                    <label for="replicas">"Replicas"</label>
                    <input id="replicas" type="number" min="0" bind:value=replicas/>
                    {field_error("replicas")}
                </div>
            </div>
            <label for="health-path">"Health check path"</label>
            <input id="health-path" bind:value=health_path placeholder="/up (empty: a TCP connect is enough)"/>
            {field_error("health_path")}
            <label class="check">
                <input id="h2c" type="checkbox" bind:checked=h2c/>
                " The app speaks HTTP/2 without TLS (h2c, e.g. gRPC)"
            </label>
            <div class="row">
                <div class="stack">
                    <label for="cpu">"CPU (millicores)"</label>
                    <input id="cpu" type="number" min="0" bind:value=cpu placeholder="no limit"/>
                    {field_error("cpu_millis")}
                </div>
                <div class="stack">
                    <label for="memory">"Memory (MB)"</label>
                    <input id="memory" type="number" min="0" bind:value=memory placeholder="no limit"/>
                    {field_error("memory_mb")}
                </div>
            </div>
            <label for="env">"Environment (KEY=VALUE per line)"</label>
            <textarea id="env" rows="4" bind:value=env></textarea>
            {field_error("env")}
            <button type="submit" class="primary" id="create" disabled=move || busy.get()>
                {move || if busy.get() { "Creating…" } else { "Create and deploy" }}
            </button>
        </form>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_text_is_parsed_line_by_line() {
        let env = parse_env("A=1\n\n# comment\nB = two=2\n").unwrap();
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some(" two=2"));
        assert_eq!(parse_env("A=1\nnope").unwrap_err(), "line 2 is not KEY=VALUE: nope");
    }
}
