//! One app: its state, releases with deploy and rollback, live progress, charts, replicas, logs,
//! scale and environment, custom domains and edge settings.

use berth_wire::api::{
    AppDetail, AppMetrics, Deploy, LogLine, ReleaseAccepted, ReleaseInfo, ReleaseState, Rollback, Scale,
};
use berth_wire::builds::{BuildInfo, BuildLogLine, BuildState, GitInfo, WebhookDelivery};
use berth_wire::edge::{AddDomain, CertState, DomainInfo, EdgeSettings};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_navigate, use_params_map};

use super::apps::{TeamTabs, parse_env, team_param};
use crate::api::{self, ApiError};
use crate::ui::{ErrorNote, LineChart, Series, format_bytes, format_time};

/// Points kept for the CPU and memory charts (one per metrics event, every two seconds).
const USAGE_POINTS: usize = 60;
/// Log lines kept on the page.
const LOG_LINES: usize = 300;
/// How often the panels the event stream does not cover (builds, domains) are refreshed while the
/// page is open.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Copy)]
struct Ctx {
    team: Memo<String>,
    app: Memo<String>,
    detail: RwSignal<Option<AppDetail>>,
    /// The outcome of the last action (deploy, scale, …), shown under the actions.
    outcome: RwSignal<Option<Result<String, ApiError>>>,
    busy: RwSignal<bool>,
    /// Counts the page's refreshes (one every [`REFRESH_EVERY`], in the browser only): the panels
    /// the event stream does not cover reload when it moves.
    tick: RwSignal<u64>,
}

impl Ctx {
    fn base(&self) -> String {
        format!("/api/v1/teams/{}/apps/{}", self.team.get_untracked(), self.app.get_untracked())
    }

    /// Runs one mutation; its answer (or error) becomes the outcome line.
    fn act<B>(self, what: &'static str, path: &'static str, body: B)
    where
        B: serde::Serialize + 'static,
    {
        self.busy.set(true);
        self.outcome.set(None);
        let url = format!("{}/{path}", self.base());
        leptos::task::spawn_local(async move {
            let result = api::post::<_, ReleaseAccepted>(url, &body).await;
            self.outcome.set(Some(result.map(|r| format!("{what}: release #{} started", r.release))));
            self.busy.set(false);
        });
    }
}

#[component]
pub fn AppPage() -> impl IntoView {
    let params = use_params_map();
    let team = team_param();
    let app = Memo::new(move |_| params.read().get("app").unwrap_or_default());
    let initial = Resource::new(
        move || (team.get(), app.get()),
        |(team, app)| api::get::<AppDetail>(format!("/api/v1/teams/{team}/apps/{app}")),
    );
    let initial_metrics = Resource::new(
        move || (team.get(), app.get()),
        |(team, app)| api::get::<AppMetrics>(format!("/api/v1/teams/{team}/apps/{app}/metrics")),
    );
    let detail: RwSignal<Option<AppDetail>> = RwSignal::new(None);
    let metrics: RwSignal<Option<AppMetrics>> = RwSignal::new(None);
    let usage: RwSignal<Vec<(u64, u64)>> = RwSignal::new(Vec::new());
    let gone: RwSignal<Option<ApiError>> = RwSignal::new(None);
    let ctx =
        Ctx { team, app, detail, outcome: RwSignal::new(None), busy: RwSignal::new(false), tick: RwSignal::new(0) };
    // In the browser only (effects do not run on the server): the one refresh clock of the page.
    Effect::new(move |_| {
        if let Ok(handle) = set_interval_with_handle(move || ctx.tick.update(|t| *t += 1), REFRESH_EVERY) {
            on_cleanup(move || handle.clear());
        }
    });

    Effect::new(move |_| {
        let url = format!("/api/v1/teams/{}/apps/{}/watch", team.get(), app.get());
        api::subscribe(url, &["app", "metrics", "error"], move |name, data| match name {
            "app" => {
                if let Ok(d) = serde_json::from_str(&data) {
                    detail.set(Some(d));
                }
            }
            "metrics" => {
                if let Ok(m) = serde_json::from_str::<AppMetrics>(&data) {
                    usage.update(|points| {
                        points.push((m.cpu_millis, m.memory_bytes));
                        let excess = points.len().saturating_sub(USAGE_POINTS);
                        points.drain(..excess);
                    });
                    metrics.set(Some(m));
                }
            }
            _ => {
                if let Ok(body) = serde_json::from_str::<berth_wire::ErrorBody>(&data) {
                    gone.set(Some(ApiError { status: 404, code: body.code, message: body.message, field: body.field }));
                }
            }
        });
    });

    view! {
        <Title text=move || format!("{} · Berth", app.get())/>
        <div class="title-row">
            <h1 id="app-name">{move || app.get()}</h1>
            <TeamTabs/>
        </div>
        {move || gone.get().map(|error| view! { <ErrorNote error/> })}
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                let first = initial.await;
                let first_metrics = initial_metrics.await.ok();
                match first {
                    Err(error) => view! { <ErrorNote error/> }.into_any(),
                    Ok(first) => {
                        let current = Signal::derive(move || detail.get().unwrap_or_else(|| first.clone()));
                        let current_metrics = Signal::derive(move || metrics.get().or_else(|| first_metrics.clone()));
                        view! {
                            <Summary current=current/>
                            <div class="grid">
                                <Actions ctx current=current/>
                                <Progress current=current/>
                            </div>
                            <Charts metrics=current_metrics usage/>
                            <Replicas current=current/>
                            <Releases ctx current=current/>
                            <Builds ctx/>
                            <Domains ctx/>
                            <Logs ctx/>
                            <Danger ctx/>
                        }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// A spec's environment as the editor shows it, `KEY=VALUE` per line.
fn env_lines(spec: &berth_wire::AppSpec) -> String {
    spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

fn serving(detail: &AppDetail) -> Option<&ReleaseInfo> {
    let number = detail.summary.serving_release?;
    detail.releases.iter().find(|r| r.number == number)
}

#[component]
fn Summary(current: Signal<AppDetail>) -> impl IntoView {
    view! {
        {move || {
            let d = current.get();
            let s = &d.summary;
            let healthy = s.replicas_ready >= s.replicas_desired && s.replicas_desired > 0;
            view! {
                <section class="summary panel" aria-label="Summary">
                    <div><span class="label">"URL"</span><a id="app-url" href=s.url.clone() target="_blank" rel="noopener">{s.url.clone()}</a></div>
                    <div><span class="label">"Replicas"</span>
                        <span id="app-replicas" class=if healthy { "badge ok" } else { "badge warn" }>
                            {format!("{} / {} ready", s.replicas_ready, s.replicas_desired)}
                        </span>
                    </div>
                    <div><span class="label">"Serving"</span><span id="serving-release">{s.serving_release.map_or("none".into(), |r| format!("#{r}"))}</span></div>
                    <div><span class="label">"Image"</span><code>{s.image.clone()}</code></div>
                </section>
            }
        }}
    }
}

#[component]
fn Actions(ctx: Ctx, current: Signal<AppDetail>) -> impl IntoView {
    let untracked = current.get_untracked();
    let spec = serving(&untracked).or(untracked.releases.first()).map(|r| r.spec.clone());
    let image = RwSignal::new(spec.as_ref().map(|s| s.image.clone()).unwrap_or_default());
    let replicas = RwSignal::new(spec.as_ref().map_or(1, |s| s.replicas).to_string());
    let env = RwSignal::new(spec.as_ref().map(env_lines).unwrap_or_default());
    let env_error: RwSignal<Option<String>> = RwSignal::new(None);
    // When another release starts serving (from this page or elsewhere), the fields show its spec.
    Effect::new(move |previous: Option<Option<u32>>| {
        let now = current.with(|d| d.summary.serving_release);
        if previous.is_some_and(|p| p != now)
            && let Some(spec) = current.with(|d| serving(d).map(|r| r.spec.clone()))
        {
            image.set(spec.image.clone());
            replicas.set(spec.replicas.to_string());
            env.set(env_lines(&spec));
        }
        now
    });

    let deploy = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let image = Some(image.get_untracked().trim().to_string()).filter(|i| !i.is_empty());
        ctx.act("Deploy", "deploy", Deploy { image, ..Deploy::default() });
    };
    let scale = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        match replicas.get_untracked().trim().parse::<u32>() {
            Ok(n) => ctx.act("Scale", "scale", Scale { replicas: n }),
            Err(_) => ctx.outcome.set(Some(Err(ApiError {
                status: 422,
                code: "validation".into(),
                message: "replicas must be a whole number".into(),
                field: Some("replicas".into()),
            }))),
        }
    };
    let save_env = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let wanted = match parse_env(&env.get_untracked()) {
            Ok(wanted) => wanted,
            Err(message) => return env_error.set(Some(message)),
        };
        env_error.set(None);
        let now = current.get_untracked();
        let old = serving(&now).map(|r| r.spec.env.clone()).unwrap_or_default();
        let unset_env = old.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        ctx.act("Environment", "deploy", Deploy { env: wanted, unset_env, ..Deploy::default() });
    };
    // Secrets are write-only: the names of those set, a box for new or replaced values.
    let new_secrets = RwSignal::new(String::new());
    let secrets_error: RwSignal<Option<String>> = RwSignal::new(None);
    let secret_names = move || {
        current.with(|d| {
            serving(d)
                .or(d.releases.first())
                .map(|r| r.spec.secrets.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
    };
    let save_secrets = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let secrets = match parse_env(&new_secrets.get_untracked()) {
            Ok(secrets) if secrets.is_empty() => return secrets_error.set(Some("give one KEY=VALUE per line".into())),
            Ok(secrets) => secrets,
            Err(message) => return secrets_error.set(Some(message)),
        };
        secrets_error.set(None);
        new_secrets.set(String::new());
        ctx.act("Secrets", "deploy", Deploy { secrets, ..Deploy::default() });
    };
    let rollback = move |_| ctx.act("Rollback", "rollback", Rollback { to: None });
    let can_roll_back =
        move || current.with(|d| d.releases.iter().filter(|r| r.state == ReleaseState::Superseded).count() > 0);

    view! {
        <section class="panel stack" aria-labelledby="actions-title">
            <h2 id="actions-title">"Release"</h2>
            <form class="row" on:submit=deploy id="deploy-form">
                <div class="stack grow">
                    <label for="deploy-image">"Image"</label>
                    <input id="deploy-image" bind:value=image/>
                </div>
                <button type="submit" class="primary" id="deploy" disabled=move || ctx.busy.get()>"Deploy"</button>
            </form>
            <div class="row">
                <button type="button" id="rollback" on:click=rollback disabled=move || ctx.busy.get() || !can_roll_back()>
                    "Roll back to the previous release"
                </button>
            </div>
            <form class="row" on:submit=scale id="scale-form">
                <div class="stack">
                    <label for="scale-replicas">"Replicas"</label>
                    <input id="scale-replicas" type="number" min="0" bind:value=replicas/>
                </div>
                <button type="submit" id="scale" disabled=move || ctx.busy.get()>"Scale"</button>
            </form>
            <form class="stack" on:submit=save_env id="env-form">
                <label for="env-edit">"Environment (KEY=VALUE per line)"</label>
                <textarea id="env-edit" rows="3" bind:value=env></textarea>
                {move || env_error.get().map(|m| view! { <p class="field-error">{m}</p> })}
                <button type="submit" id="save-env" disabled=move || ctx.busy.get()>"Save and release"</button>
            </form>
            <form class="stack" on:submit=save_secrets id="secrets-form">
                <span class="label">"Secrets"</span>
                <ul id="secret-names" class="plain">
                    {move || secret_names().into_iter().map(|name| {
                        let unset = name.clone();
                        let remove = move |_| ctx.act("Secrets", "deploy", Deploy { unset_env: vec![unset.clone()], ..Deploy::default() });
                        view! {
                            <li data-secret=name.clone()>
                                <code>{name.clone()}</code>" "<span class="muted">"set"</span>" "
                                <button type="button" class="link" on:click=remove disabled=move || ctx.busy.get()>"Remove"</button>
                            </li>
                        }
                    }).collect_view()}
                </ul>
                <label for="secrets-edit">"Add or replace secrets (KEY=VALUE per line; a value is never shown again)"</label>
                <textarea id="secrets-edit" rows="2" autocomplete="off" spellcheck="false" bind:value=new_secrets></textarea>
                {move || secrets_error.get().map(|m| view! { <p class="field-error">{m}</p> })}
                <button type="submit" id="save-secrets" disabled=move || ctx.busy.get()>"Save secrets and release"</button>
            </form>
            {move || ctx.outcome.get().map(|outcome| match outcome {
                Ok(message) => view! { <p class="notice" role="status" id="action-outcome">{message}</p> }.into_any(),
                Err(error) => view! { <div id="action-outcome"><ErrorNote error/></div> }.into_any(),
            })}
        </section>
    }
}

/// The newest release's progress, phase by phase, as the orchestrator records it.
#[component]
fn Progress(current: Signal<AppDetail>) -> impl IntoView {
    view! {
        <section class="panel" aria-labelledby="progress-title" aria-live="polite">
            <h2 id="progress-title">"Progress"</h2>
            {move || {
                let d = current.get();
                match d.releases.iter().max_by_key(|r| r.number).cloned() {
                    None => view! { <p class="empty">"No release yet."</p> }.into_any(),
                    Some(release) => {
                        let state = release.state.as_str();
                        view! {
                            <div id="progress" data-release=release.number data-state=state>
                                <p>
                                    <strong>{format!("Release #{}", release.number)}</strong>" "
                                    <span class=format!("badge {}", state_class(release.state))>{state_label(release.state)}</span>
                                </p>
                                {release.message.clone().map(|m| view! { <p class="error" role="alert">{m}</p> })}
                                <ol class="events">
                                    {release.events.iter().map(|e| view! {
                                        <li data-phase=e.phase.clone()>
                                            <span class="phase">{e.phase.replace('_', " ")}</span>" "
                                            <span class="muted">{format_time(e.at)}</span>
                                            <div>{e.message.clone()}</div>
                                        </li>
                                    }).collect_view()}
                                </ol>
                            </div>
                        }.into_any()
                    }
                }
            }}
        </section>
    }
}

fn state_label(state: ReleaseState) -> &'static str {
    match state {
        ReleaseState::Queued => "queued",
        ReleaseState::InProgress => "in progress",
        ReleaseState::Serving => "done: serving",
        ReleaseState::Superseded => "superseded",
        ReleaseState::Failed => "failed",
    }
}

fn state_class(state: ReleaseState) -> &'static str {
    match state {
        ReleaseState::Serving => "ok",
        ReleaseState::Failed => "bad",
        ReleaseState::Queued | ReleaseState::InProgress => "warn",
        ReleaseState::Superseded => "",
    }
}

#[component]
fn Charts(metrics: Signal<Option<AppMetrics>>, usage: RwSignal<Vec<(u64, u64)>>) -> impl IntoView {
    view! {
        <section class="charts" aria-label="Charts">
            {move || {
                let traffic = metrics.get().map(|m| m.traffic).unwrap_or_default();
                let requests = traffic.iter().map(|t| Some(t.requests as f64)).collect();
                let p50 = traffic.iter().map(|t| t.p50_ms).collect();
                let p99 = traffic.iter().map(|t| t.p99_ms).collect();
                let class = |i: usize| traffic.iter().map(|t| Some(t.classes[i] as f64)).collect::<Vec<_>>();
                let points = usage.get();
                let cpu = points.iter().map(|(c, _)| Some(*c as f64)).collect();
                // MiB once any sample reaches 10 MiB, KiB below that.
                let largest = points.iter().map(|(_, m)| *m).max().unwrap_or(0);
                let (memory_unit, divisor) = if largest >= 10 << 20 { ("MiB", 1024.0 * 1024.0) } else { ("KiB", 1024.0) };
                let memory = points.iter().map(|(_, m)| Some(*m as f64 / divisor)).collect();
                let now_memory = metrics.get().map_or(0, |m| m.memory_bytes);
                view! {
                    <LineChart title="Requests per second" unit="req/s"
                        series=vec![Series { label: "requests", class: "s1", points: requests }]/>
                    <LineChart title="Latency" unit="ms" series=vec![
                        Series { label: "p50", class: "s1", points: p50 },
                        Series { label: "p99", class: "s2", points: p99 },
                    ]/>
                    <LineChart title="Responses by status" unit="/s" series=vec![
                        Series { label: "2xx", class: "s1", points: class(1) },
                        Series { label: "3xx", class: "s3", points: class(2) },
                        Series { label: "4xx", class: "s2", points: class(3) },
                        Series { label: "5xx", class: "s4", points: class(4) },
                    ]/>
                    <LineChart title="CPU" unit="millicores" series=vec![Series { label: "all replicas", class: "s1", points: cpu }]/>
                    <LineChart title="Memory" unit=memory_unit series=vec![Series { label: "all replicas", class: "s3", points: memory }]/>
                    <p class="muted small">{format!("Memory now: {}", format_bytes(now_memory))}</p>
                }
            }}
        </section>
    }
}

#[component]
fn Replicas(current: Signal<AppDetail>) -> impl IntoView {
    view! {
        <section aria-labelledby="replicas-title">
            <h2 id="replicas-title">"Replicas"</h2>
            {move || {
                let d = current.get();
                if d.replicas.is_empty() {
                    return view! { <p class="empty">"No replicas (scaled to zero, or not placed yet)."</p> }.into_any();
                }
                view! {
                    <div class="table-wrap">
                        <table id="replicas">
                            <thead><tr><th>"Replica"</th><th>"Release"</th><th>"Host"</th><th>"State"</th><th>"Health"</th><th>"Restarts"</th><th>"Up since (UTC)"</th><th>"CPU / memory"</th></tr></thead>
                            <tbody>
                                {d.replicas.into_iter().map(|r| {
                                    let phase = format!("{:?}", r.phase).to_lowercase();
                                    let phase_attr = phase.clone();
                                    let uptime = r.started_at.map(format_time);
                                    view! {
                                        <tr data-phase=phase_attr>
                                            <td><code>{r.id.clone()}</code></td>
                                            <td>{format!("#{}", r.release)}</td>
                                            <td>{r.host.clone()}</td>
                                            <td>{phase}{r.message.clone().map(|m| view! { <div class="muted small">{m}</div> })}</td>
                                            <td>{if r.ready { view! { <span class="badge ok">"ready"</span> } } else { view! { <span class="badge warn">"not ready"</span> } }}</td>
                                            <td>{r.restarts}</td>
                                            <td>{uptime.unwrap_or_else(|| "–".into())}</td>
                                            <td>{r.usage.map_or("–".into(), |u| format!("{}m / {}", u.cpu_millis, format_bytes(u.memory_bytes)))}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }.into_any()
            }}
        </section>
    }
}

#[component]
fn Releases(ctx: Ctx, current: Signal<AppDetail>) -> impl IntoView {
    view! {
        <section aria-labelledby="releases-title">
            <h2 id="releases-title">"Releases"</h2>
            {move || {
                let d = current.get();
                let mut releases = d.releases.clone();
                releases.sort_by_key(|r| std::cmp::Reverse(r.number));
                view! {
                    <div class="table-wrap">
                        <table id="releases">
                            <thead><tr><th>"#"</th><th>"Image"</th><th>"Replicas"</th><th>"State"</th><th>"Created"</th><th></th></tr></thead>
                            <tbody>
                                {releases.into_iter().map(|r| {
                                    let number = r.number;
                                    let can_roll_back = r.state == ReleaseState::Superseded;
                                    view! {
                                        <tr data-release=number data-state=r.state.as_str()>
                                            <td>{format!("#{number}")}{r.rollback_of.map(|o| format!(" (rollback to #{o})"))}</td>
                                            <td><code>{r.spec.image.clone()}</code></td>
                                            <td>{r.spec.replicas}</td>
                                            <td><span class=format!("badge {}", state_class(r.state))>{state_label(r.state)}</span>
                                                {r.message.clone().map(|m| view! { <div class="muted small">{m}</div> })}</td>
                                            <td>{format_time(r.created_at)}</td>
                                            <td>{can_roll_back.then(|| view! {
                                                <button type="button" class="small" data-rollback=number
                                                    disabled=move || ctx.busy.get()
                                                    on:click=move |_| ctx.act("Rollback", "rollback", Rollback { to: Some(number) })>
                                                    {format!("Roll back to #{number}")}
                                                </button>
                                            })}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }
            }}
        </section>
    }
}

/// Build log lines kept on the page.
const BUILD_LOG_LINES: usize = 2000;

/// Builds from git: the remote to push to, the builds (state, commit, who, duration, outcome)
/// and the log of the newest build, live while it runs.
#[component]
fn Builds(ctx: Ctx) -> impl IntoView {
    let git = Resource::new(
        move || (ctx.team.get(), ctx.app.get()),
        |(team, app)| api::get::<GitInfo>(format!("/api/v1/teams/{team}/apps/{app}/git")),
    );
    let initial = Resource::new(
        move || (ctx.team.get(), ctx.app.get()),
        |(team, app)| api::get::<Vec<BuildInfo>>(format!("/api/v1/teams/{team}/apps/{app}/builds")),
    );
    let builds: RwSignal<Option<Vec<BuildInfo>>> = RwSignal::new(None);
    let deliveries: RwSignal<Vec<WebhookDelivery>> = RwSignal::new(Vec::new());
    let log: RwSignal<Vec<BuildLogLine>> = RwSignal::new(Vec::new());
    // In the browser only: refresh the list with the page, so a build started by a push shows up.
    Effect::new(move |_| {
        ctx.tick.track();
        let base = ctx.base();
        let (url, hooks) = (format!("{base}/builds"), format!("{base}/webhook-deliveries"));
        leptos::task::spawn_local(async move {
            if let Ok(list) = api::get::<Vec<BuildInfo>>(url).await {
                builds.set(Some(list));
            }
            if let Ok(list) = api::get::<Vec<WebhookDelivery>>(hooks).await {
                deliveries.set(list);
            }
        });
    });
    // The newest build's log: followed from its first line whenever a newer build appears (a
    // reconnecting stream resumes after its last line; lines are kept in index order).
    let newest = Memo::new(move |_| builds.with(|b| b.as_ref().and_then(|b| b.first().map(|b| b.number))));
    Effect::new(move |_| {
        let Some(number) = newest.get() else { return };
        log.set(Vec::new());
        let url = format!("{}/builds/{number}/log", ctx.base());
        api::subscribe(url, &["line"], move |_, data| {
            if let Ok(line) = serde_json::from_str::<BuildLogLine>(&data) {
                log.update(|all| {
                    if line.index as usize == all.len() {
                        all.push(line);
                    }
                });
            }
        });
    });
    view! {
        <section aria-labelledby="builds-title" id="builds-panel">
            <h2 id="builds-title">"Builds"</h2>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match git.await {
                        Ok(info) => view! {
                            <p>"Push to deploy: "<code id="git-remote">{format!("git push {} {}", info.remote_url, info.settings.deploy_branch)}</code></p>
                        }.into_any(),
                        Err(error) => view! { <ErrorNote error/> }.into_any(),
                    }
                })}
            </Suspense>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let first = initial.await.unwrap_or_default();
                    view! {
                        {move || {
                            let list = builds.get().unwrap_or_else(|| first.clone());
                            if list.is_empty() {
                                return view! { <p class="empty">"No builds yet."</p> }.into_any();
                            }
                            view! {
                                <div class="table-wrap">
                                    <table id="builds">
                                        <thead><tr><th>"#"</th><th>"State"</th><th>"Commit"</th><th>"By"</th><th>"Duration"</th><th>"Release"</th></tr></thead>
                                        <tbody>
                                            {list.into_iter().map(|b| {
                                                let took = match (b.started_at, b.finished_at) {
                                                    (Some(start), Some(end)) => format!("{} s", (end - start).max(0) / 1000),
                                                    (Some(_), None) => "running".to_string(),
                                                    _ => "-".to_string(),
                                                };
                                                view! {
                                                    <tr data-build=b.number data-state=b.state.as_str()>
                                                        <td>{format!("#{}", b.number)}</td>
                                                        <td><span class=format!("badge {}", build_class(b.state))>{b.state.as_str().replace('_', " ")}</span>
                                                            {b.message.clone().map(|m| view! { <div class="muted small build-message">{m}</div> })}</td>
                                                        <td><code>{b.commit.chars().take(12).collect::<String>()}</code></td>
                                                        <td>{b.pusher.clone()}</td>
                                                        <td>{took}</td>
                                                        <td>{b.release.map_or_else(|| "-".to_string(), |r| format!("#{r}"))}</td>
                                                    </tr>
                                                }
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                </div>
                            }.into_any()
                        }}
                    }
                })}
            </Suspense>
            {move || {
                let list = deliveries.get();
                (!list.is_empty()).then(|| view! {
                    <h3>"Webhook deliveries"</h3>
                    <div class="table-wrap">
                        <table id="webhook-deliveries">
                            <thead><tr><th>"When"</th><th>"Verdict"</th><th>"Delivery"</th><th>"Reason"</th><th>"Build"</th></tr></thead>
                            <tbody>
                                {list.into_iter().map(|d| view! {
                                    <tr data-verdict=d.verdict.clone()>
                                        <td>{format_time(d.at)}</td>
                                        <td><span class=format!("badge {}", match d.verdict.as_str() { "accepted" => "ok", "refused" => "bad", _ => "" })>{d.verdict.clone()}</span></td>
                                        <td><code>{d.delivery.clone().unwrap_or_else(|| "-".into())}</code></td>
                                        <td>{d.reason.clone()}</td>
                                        <td>{d.build.map_or_else(|| "-".to_string(), |b| format!("#{b}"))}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                })
            }}
            <pre class="logs" id="build-log" tabindex="0" aria-live="off" aria-label="Build log">
                {move || log.with(|all| {
                    let skip = all.len().saturating_sub(BUILD_LOG_LINES);
                    all.iter().skip(skip).map(|l| format!("{}\n", l.line)).collect::<String>()
                })}
            </pre>
        </section>
    }
}

fn build_class(state: BuildState) -> &'static str {
    match state {
        BuildState::Succeeded => "ok",
        BuildState::Failed | BuildState::TimedOut => "bad",
        BuildState::Queued | BuildState::Building | BuildState::Releasing => "warn",
        BuildState::Canceled => "",
    }
}

/// The names the app is served at, with their certificates (reloaded with the page, so an
/// issued or failed certificate shows), adding and removing custom domains (removal behind a
/// second click), and the edge settings: redirect to HTTPS and HSTS.
#[component]
fn Domains(ctx: Ctx) -> impl IntoView {
    let initial = Resource::new(
        move || (ctx.team.get(), ctx.app.get()),
        |(team, app)| api::get::<Vec<DomainInfo>>(format!("/api/v1/teams/{team}/apps/{app}/domains")),
    );
    let edge = Resource::new(
        move || (ctx.team.get(), ctx.app.get()),
        |(team, app)| api::get::<EdgeSettings>(format!("/api/v1/teams/{team}/apps/{app}/edge")),
    );
    let domains: RwSignal<Option<Vec<DomainInfo>>> = RwSignal::new(None);
    let name = RwSignal::new(String::new());
    let outcome: RwSignal<Option<Result<String, ApiError>>> = RwSignal::new(None);
    let busy = RwSignal::new(false);
    // The domain whose Remove button was clicked once.
    let armed: RwSignal<Option<String>> = RwSignal::new(None);
    let reload = move || {
        let url = format!("{}/domains", ctx.base());
        leptos::task::spawn_local(async move {
            // Only a change redraws the table (a redraw would take the focus off its buttons).
            if let Ok(list) = api::get::<Vec<DomainInfo>>(url).await
                && domains.with_untracked(|d| d.as_ref() != Some(&list))
            {
                domains.set(Some(list));
            }
        });
    };
    // In the browser only: with the page.
    Effect::new(move |_| {
        ctx.tick.track();
        reload();
    });

    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let input = AddDomain { name: name.get_untracked().trim().to_string() };
        busy.set(true);
        outcome.set(None);
        let url = format!("{}/domains", ctx.base());
        leptos::task::spawn_local(async move {
            match api::post::<_, DomainInfo>(url, &input).await {
                Ok(added) => {
                    name.set(String::new());
                    let certificate = cert_label(added.state);
                    outcome.set(Some(Ok(format!("{} now serves the app; certificate: {certificate}", added.name))));
                    reload();
                }
                Err(error) => outcome.set(Some(Err(error))),
            }
            busy.set(false);
        });
    };
    let remove = move |domain: String| {
        if armed.get_untracked().as_deref() != Some(domain.as_str()) {
            return armed.set(Some(domain));
        }
        armed.set(None);
        busy.set(true);
        outcome.set(None);
        let url = format!("{}/domains/{domain}", ctx.base());
        leptos::task::spawn_local(async move {
            let result = api::delete(url).await;
            outcome.set(Some(result.map(|()| format!("{domain} no longer serves the app"))));
            reload();
            busy.set(false);
        });
    };

    view! {
        <section aria-labelledby="domains-title" id="domains-panel">
            <h2 id="domains-title">"Domains"</h2>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match initial.await {
                        Err(error) => view! { <ErrorNote error/> }.into_any(),
                        Ok(first) => view! {
                            {move || {
                                let list = domains.get().unwrap_or_else(|| first.clone());
                                view! {
                                    <div class="table-wrap">
                                        <table id="domains">
                                            <thead><tr><th>"Name"</th><th>"Certificate"</th><th>"Expires (UTC)"</th><th></th></tr></thead>
                                            <tbody>
                                                {list.into_iter().map(|d| {
                                                    let state: &'static str = d.state.into();
                                                    let source: Option<&'static str> = d.source.map(Into::into);
                                                    let for_remove = d.name.clone();
                                                    let is_armed = {
                                                        let name = d.name.clone();
                                                        move || armed.with(|a| a.as_deref() == Some(name.as_str()))
                                                    };
                                                    view! {
                                                        <tr class="domain-row" data-domain=d.name.clone() data-state=state>
                                                            <td><code>{d.name.clone()}</code>
                                                                {(!d.custom).then(|| view! { <div class="muted small">"the app's own name"</div> })}</td>
                                                            <td><span class=format!("badge {}", cert_class(d.state))>{cert_label(d.state)}</span>
                                                                {source.map(|s| view! { " "<span class="muted small">{format!("({s})")}</span> })}
                                                                {(d.state == CertState::None).then(|| view! { <div class="muted small">"HTTPS is off for this name"</div> })}
                                                                {d.error.clone().map(|e| view! { <div class="small error domain-error">{e}</div> })}
                                                                {d.next_attempt_at.map(|at| view! { <div class="muted small">{format!("next attempt {} UTC", format_time(at))}</div> })}</td>
                                                            <td>{d.not_after.map_or_else(|| "-".to_string(), format_time)}</td>
                                                            <td>{d.custom.then(|| view! {
                                                                <button type="button" class="small danger remove-domain"
                                                                    disabled=move || busy.get()
                                                                    on:click=move |_| remove(for_remove.clone())>
                                                                    {move || if is_armed() { "Click again to remove" } else { "Remove" }}
                                                                </button>
                                                            })}</td>
                                                        </tr>
                                                    }
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                    </div>
                                }
                            }}
                        }.into_any(),
                    }
                })}
            </Suspense>
            <div class="grid">
                <form class="panel stack" on:submit=add id="add-domain-form">
                    <h3>"Add a domain"</h3>
                    <label for="domain-name">"Name"</label>
                    <input id="domain-name" bind:value=name placeholder="www.example.com" aria-describedby="domain-help"/>
                    <p class="help" id="domain-help">"Point the name's DNS at this Berth; with ACME configured, a certificate is obtained for it."</p>
                    <button type="submit" id="add-domain" disabled=move || busy.get()>"Add domain"</button>
                    {move || outcome.get().map(|outcome| match outcome {
                        Ok(message) => view! { <p class="notice" role="status" id="domain-outcome">{message}</p> }.into_any(),
                        Err(error) => view! { <div id="domain-outcome"><ErrorNote error/></div> }.into_any(),
                    })}
                </form>
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        match edge.await {
                            Ok(settings) => view! { <Edge ctx settings/> }.into_any(),
                            Err(error) => view! { <ErrorNote error/> }.into_any(),
                        }
                    })}
                </Suspense>
            </div>
        </section>
    }
}

/// Redirect to HTTPS and HSTS, saved together.
#[component]
fn Edge(ctx: Ctx, settings: EdgeSettings) -> impl IntoView {
    let redirect = RwSignal::new(settings.https_redirect.unwrap_or(true));
    let hsts = RwSignal::new(settings.hsts_max_age.unwrap_or(0).to_string());
    let outcome: RwSignal<Option<Result<String, ApiError>>> = RwSignal::new(None);
    let busy = RwSignal::new(false);
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Ok(age) = hsts.get_untracked().trim().parse::<u64>() else {
            return outcome.set(Some(Err(ApiError {
                status: 422,
                code: "validation".into(),
                message: "the HSTS max-age is a whole number of seconds (0 turns HSTS off)".into(),
                field: Some("hsts_max_age".into()),
            })));
        };
        let change = EdgeSettings { https_redirect: Some(redirect.get_untracked()), hsts_max_age: Some(age) };
        busy.set(true);
        outcome.set(None);
        let url = format!("{}/edge", ctx.base());
        leptos::task::spawn_local(async move {
            match api::patch::<_, EdgeSettings>(url, &change).await {
                Ok(saved) => {
                    let on = saved.https_redirect.unwrap_or(true);
                    redirect.set(on);
                    hsts.set(saved.hsts_max_age.unwrap_or(0).to_string());
                    let age = saved.hsts_max_age.map_or_else(|| "off".to_string(), |age| format!("max-age {age} s"));
                    let to_https = if on { "on" } else { "off" };
                    outcome.set(Some(Ok(format!("Saved: redirect to HTTPS {to_https}, HSTS {age}"))));
                }
                Err(error) => outcome.set(Some(Err(error))),
            }
            busy.set(false);
        });
    };
    view! {
        <form class="panel stack" on:submit=save id="edge-form">
            <h3>"Edge settings"</h3>
            <label class="check">
                <input id="edge-redirect" type="checkbox" bind:checked=redirect/>
                " Redirect HTTP to HTTPS (for names with a certificate)"
            </label>
            <label for="edge-hsts">"HSTS max-age (seconds; 0 = off)"</label>
            <input id="edge-hsts" type="number" min="0" bind:value=hsts/>
            <button type="submit" id="save-edge" disabled=move || busy.get()>"Save edge settings"</button>
            {move || outcome.get().map(|outcome| match outcome {
                Ok(message) => view! { <p class="notice" role="status" id="edge-outcome">{message}</p> }.into_any(),
                Err(error) => view! { <div id="edge-outcome"><ErrorNote error/></div> }.into_any(),
            })}
        </form>
    }
}

fn cert_label(state: CertState) -> &'static str {
    match state {
        CertState::None => "none",
        CertState::Pending => "pending",
        CertState::Issued => "issued",
        CertState::Failed => "failed",
    }
}

fn cert_class(state: CertState) -> &'static str {
    match state {
        CertState::Issued => "ok",
        CertState::Pending => "warn",
        CertState::Failed => "bad",
        CertState::None => "",
    }
}

/// The replicas' output, followed live. The stream covers the replicas that exist when it opens,
/// so it is reopened whenever the set of replicas changes (after a release, a restart elsewhere).
#[component]
fn Logs(ctx: Ctx) -> impl IntoView {
    let lines: RwSignal<Vec<LogLine>> = RwSignal::new(Vec::new());
    let replica_set = Memo::new(move |_| {
        ctx.detail.with(|d| d.as_ref().map(|d| d.replicas.iter().map(|r| r.id.clone()).collect::<Vec<_>>()))
    });
    Effect::new(move |_| {
        replica_set.track();
        lines.set(Vec::new());
        let url = format!("{}/logs?follow=true&tail=100", ctx.base());
        api::subscribe(url, &["log"], move |_, data| {
            if let Ok(line) = serde_json::from_str::<LogLine>(&data) {
                lines.update(|all| {
                    all.push(line);
                    let excess = all.len().saturating_sub(LOG_LINES);
                    all.drain(..excess);
                });
            }
        });
    });
    view! {
        <section aria-labelledby="logs-title">
            <h2 id="logs-title">"Logs"</h2>
            <pre class="logs" id="logs" tabindex="0" aria-live="off">
                {move || {
                    let all = lines.get();
                    if all.is_empty() {
                        "No output yet.".to_string()
                    } else {
                        all.iter().map(|l| format!("{} #{} {}\n", l.replica, l.release, l.line)).collect()
                    }
                }}
            </pre>
        </section>
    }
}

/// Deleting the app, behind a second click.
#[component]
fn Danger(ctx: Ctx) -> impl IntoView {
    let armed = RwSignal::new(false);
    let error: RwSignal<Option<ApiError>> = RwSignal::new(None);
    let navigate = use_navigate();
    let delete = move |_| {
        if !armed.get_untracked() {
            return armed.set(true);
        }
        let navigate = navigate.clone();
        let team = ctx.team.get_untracked();
        let url = ctx.base();
        leptos::task::spawn_local(async move {
            match api::delete(url).await {
                Ok(()) => navigate(&format!("/teams/{team}/apps"), Default::default()),
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <section class="panel danger" aria-labelledby="danger-title">
            <h2 id="danger-title">"Delete"</h2>
            <p>"Stops every replica and removes the app's routes and records."</p>
            <button type="button" class="danger" id="delete-app" on:click=delete>
                {move || if armed.get() { "Click again to delete for good" } else { "Delete this app" }}
            </button>
            {move || error.get().map(|error| view! { <ErrorNote error/> })}
        </section>
    }
}
