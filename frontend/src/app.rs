//! The dashboard's shell, routes and frame (header, navigation, sign-in).

use berth_wire::identity::Me;
use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::hooks::use_query_map;
use leptos_router::path;

use crate::api::{self, ApiError};
use crate::pages;
use crate::ui::ErrorNote;

/// The wasm and JS the shell loads are `/pkg/berth.js` and `/pkg/berth_bg.wasm`.
pub const OUTPUT_NAME: &str = "berth";

const STYLE: &str = include_str!("style.css");

/// The whole HTML document, rendered on the server. The style sheet is inline, so the first paint
/// is already styled; the session's CSRF token goes into a meta tag for the browser's requests.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    let csrf = use_context::<api::Csrf>().map(|c| c.0).unwrap_or_default();
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="csrf-token" content=csrf/>
                <style>{STYLE}</style>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// Who is signed in, fetched once per page load and shared by every page.
#[derive(Clone, Copy)]
pub struct SessionResource(pub Resource<Result<Me, ApiError>>);

/// The session's CSRF token, for forms that post without a script (sign-out).
pub fn csrf() -> String {
    #[cfg(not(feature = "hydrate"))]
    {
        use_context::<api::Csrf>().map(|c| c.0).unwrap_or_default()
    }
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsCast;
        web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.query_selector("meta[name=csrf-token]").ok().flatten())
            .and_then(|m| m.dyn_into::<web_sys::HtmlMetaElement>().ok())
            .map(|m| m.content())
            .unwrap_or_default()
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Title text="Berth"/>
        <Router>
            <Routes fallback=|| view! { <Frame><NotFound/></Frame> }>
                <Route path=path!("/signin") view=SignIn/>
                <Route path=path!("/invite/:token") view=pages::team::AcceptInvite/>
                <Route path=path!("/") view=|| view! { <Frame><Home/></Frame> }/>
                <Route path=path!("/teams/:team/apps") view=|| view! { <Frame><pages::apps::AppsPage/></Frame> }/>
                <Route path=path!("/teams/:team/apps/new") view=|| view! { <Frame><pages::apps::NewAppPage/></Frame> }/>
                <Route path=path!("/teams/:team/apps/:app") view=|| view! { <Frame><pages::app::AppPage/></Frame> }/>
                <Route path=path!("/teams/:team/members") view=|| view! { <Frame><pages::team::MembersPage/></Frame> }/>
                <Route path=path!("/teams/:team/audit") view=|| view! { <Frame><pages::team::AuditPage/></Frame> }/>
                <Route path=path!("/audit") view=|| view! { <Frame><pages::team::AuditPage/></Frame> }/>
                <Route path=path!("/tokens") view=|| view! { <Frame><pages::team::TokensPage/></Frame> }/>
                <Route path=path!("/hosts") view=|| view! { <Frame><pages::hosts::HostsPage/></Frame> }/>
            </Routes>
        </Router>
    }
}

/// The frame of every signed-in page: header with the teams and sections, then the page.
#[component]
fn Frame(children: Children) -> impl IntoView {
    let session = Resource::new(|| (), |_| api::get::<Me>("/api/v1/me"));
    provide_context(SessionResource(session));
    view! {
        <a class="skip" href="#content">"Skip to content"</a>
        <header class="top">
            <a class="brand" href="/">"Berth"</a>
            <nav aria-label="Sections">
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        session.await.ok().map(|me| view! {
                            {me.teams.into_iter().map(|t| {
                                let apps = format!("/teams/{}/apps", t.team);
                                view! { <A href=apps>{t.team}</A> }
                            }).collect_view()}
                            {me.instance_admin.then(|| view! { <A href="/hosts">"Hosts"</A> })}
                            <A href="/tokens">"Tokens"</A>
                            <span class="who" title="Signed in as">{me.email}</span>
                        })
                    })}
                </Suspense>
                <form method="post" action="/auth/signout" class="inline">
                    <input type="hidden" name="csrf" value=csrf()/>
                    <button type="submit" id="sign-out" class="link">"Sign out"</button>
                </form>
            </nav>
        </header>
        <main id="content">{children()}</main>
    }
}

/// The teams of the signed-in user.
#[component]
fn Home() -> impl IntoView {
    let SessionResource(session) = expect_context();
    view! {
        <h1>"Your teams"</h1>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match session.await {
                    Err(error) => view! { <ErrorNote error/> }.into_any(),
                    Ok(me) if me.teams.is_empty() => view! {
                        <p class="empty">"You are not a member of any team yet. Ask a team owner for an invitation."</p>
                    }.into_any(),
                    Ok(me) => view! {
                        <ul class="cards">
                            {me.teams.into_iter().map(|t| view! {
                                <li class="card">
                                    <a href=format!("/teams/{}/apps", t.team)><strong>{t.team.clone()}</strong></a>
                                    <span class="badge">{t.role}</span>
                                </li>
                            }).collect_view()}
                        </ul>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

fn provider_label(provider: &str) -> String {
    match provider {
        "github" => "GitHub".into(),
        "oidc" => "single sign-on".into(),
        other => other.to_string(),
    }
}

#[component]
fn NotFound() -> impl IntoView {
    view! {
        <h1>"Not found"</h1>
        <p class="empty">"There is no such page. " <a href="/">"Back to your teams"</a></p>
    }
}

/// The sign-in form. It posts to `/auth/signin` without any script, which answers with the session
/// cookie or sends the browser back here with the reason.
#[component]
fn SignIn() -> impl IntoView {
    let query = use_query_map();
    let error = move || {
        query.read().get("error").map(|code| match code.as_str() {
            "invalid" => {
                "Wrong email or password, or the account is disabled (after repeated failures, wait a few minutes)."
            }
            "rate" => "Too many sign-in attempts from here. Wait a minute and try again.",
            "external" => "Signing in with that provider did not work (or no account matches its verified email).",
            _ => "Signing in failed on the server; its log has the details.",
        })
    };
    let signed_out = move || query.read().get("signed_out").is_some();
    let next = move || query.read().get("next").unwrap_or_else(|| "/".into());
    let providers = Resource::new(|| (), |_| api::get::<Vec<String>>("/api/v1/auth/providers"));
    view! {
        <Title text="Sign in · Berth"/>
        <main id="content" class="narrow">
            <h1 class="brand-big">"Berth"</h1>
            <form method="post" action="/auth/signin" class="panel stack">
                <h2>"Sign in"</h2>
                {move || error().map(|message| view! { <p class="error" role="alert" id="sign-in-error">{message}</p> })}
                {move || signed_out().then(|| view! { <p class="notice" role="status">"You are signed out."</p> })}
                <input type="hidden" name="next" value=next/>
                <label for="email">"Email"</label>
                <input id="email" name="email" type="email" autocomplete="username" required autofocus/>
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" autocomplete="current-password" required/>
                <button type="submit" id="sign-in" class="primary">"Sign in"</button>
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        let providers = providers.await.unwrap_or_default();
                        (!providers.is_empty()).then(|| view! {
                            <p class="help">"Or sign in with"</p>
                            {providers.into_iter().map(|p| view! {
                                <a class="button" href=format!("/api/v1/auth/{p}/start")>{provider_label(&p)}</a>
                            }).collect_view()}
                        })
                    })}
                </Suspense>
            </form>
        </main>
    }
}
