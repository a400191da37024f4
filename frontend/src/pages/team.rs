//! Team self-service: members and invitations, the audit log, API tokens, accepting an invitation.

use berth_wire::identity::{
    AcceptInvite as AcceptInviteBody, AddMember, AuditEntry, CreateInvite, CreateToken, InviteCreated, Member,
    TokenCreated, TokenInfo,
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use super::apps::{TeamTabs, team_param};
use crate::api::{self, ApiError};
use crate::ui::{ErrorNote, format_time};

const ROLES: [&str; 4] = ["viewer", "deployer", "admin", "owner"];

fn role_options(selected: &'static str) -> impl IntoView {
    ROLES.map(|r| view! { <option value=r selected=r == selected>{r}</option> }).collect_view()
}

/// The outcome of the last action on a page.
type Outcome = RwSignal<Option<Result<String, ApiError>>>;

fn outcome_view(outcome: Outcome) -> impl IntoView {
    move || {
        outcome.get().map(|o| match o {
            Ok(message) => view! { <p class="notice" role="status" id="outcome">{message}</p> }.into_any(),
            Err(error) => view! { <div id="outcome"><ErrorNote error/></div> }.into_any(),
        })
    }
}

#[component]
pub fn MembersPage() -> impl IntoView {
    let team = team_param();
    let version = RwSignal::new(0u32);
    let members = Resource::new(
        move || (team.get(), version.get()),
        |(team, _)| api::get::<Vec<Member>>(format!("/api/v1/teams/{team}/members")),
    );
    let outcome: Outcome = RwSignal::new(None);
    let email = RwSignal::new(String::new());
    let role = RwSignal::new("deployer".to_string());
    let invite_role = RwSignal::new("deployer".to_string());
    let invite_email = RwSignal::new(String::new());
    let invite_link: RwSignal<Option<String>> = RwSignal::new(None);

    let set_member = move |email: String, role: String| {
        let team = team.get_untracked();
        leptos::task::spawn_local(async move {
            let body = AddMember { email: email.clone(), role: role.clone() };
            let result = api::put::<_, Member>(format!("/api/v1/teams/{team}/members"), &body).await;
            outcome.set(Some(result.map(|m| format!("{} is now {} of {team}", m.email, m.role))));
            version.update(|v| *v += 1);
        });
    };
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        set_member(email.get_untracked().trim().to_string(), role.get_untracked());
    };
    let remove = move |email: String| {
        let team = team.get_untracked();
        leptos::task::spawn_local(async move {
            let result = api::delete(format!("/api/v1/teams/{team}/members/{email}")).await;
            outcome.set(Some(result.map(|()| format!("{email} was removed from {team}"))));
            version.update(|v| *v += 1);
        });
    };
    let invite = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let team = team.get_untracked();
        let body = CreateInvite {
            role: invite_role.get_untracked(),
            email: Some(invite_email.get_untracked().trim().to_string()).filter(|e| !e.is_empty()),
            ttl_secs: None,
        };
        leptos::task::spawn_local(async move {
            match api::post::<_, InviteCreated>(format!("/api/v1/teams/{team}/invites"), &body).await {
                Ok(created) => {
                    let origin = window_origin();
                    invite_link.set(Some(format!("{origin}/invite/{}", created.token)));
                    outcome.set(Some(Ok(format!(
                        "Invitation as {} created; it works once, until {} UTC",
                        created.role,
                        format_time(created.expires_at)
                    ))));
                }
                Err(e) => outcome.set(Some(Err(e))),
            }
        });
    };

    view! {
        <Title text=move || format!("Members · {} · Berth", team.get())/>
        <div class="title-row"><h1>"Members"</h1><TeamTabs/></div>
        {outcome_view(outcome)}
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match members.await {
                    Err(error) => view! { <ErrorNote error/> }.into_any(),
                    Ok(list) => view! {
                        <div class="table-wrap">
                            <table id="members">
                                <thead><tr><th>"Email"</th><th>"Name"</th><th>"Role"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|m| {
                                        let (for_role, for_remove) = (m.email.clone(), m.email.clone());
                                        let current: &'static str = ROLES.iter().find(|r| **r == m.role).copied().unwrap_or("viewer");
                                        view! {
                                            <tr data-member=m.email.clone()>
                                                <td>{m.email.clone()}</td>
                                                <td>{m.name.clone()}</td>
                                                <td>
                                                    <label class="sr-only" for=format!("role-{}", m.email)>"Role"</label>
                                                    <select id=format!("role-{}", m.email)
                                                        on:change=move |ev| set_member(for_role.clone(), event_target_value(&ev))>
                                                        {role_options(current)}
                                                    </select>
                                                </td>
                                                <td><button type="button" class="small" on:click=move |_| remove(for_remove.clone())>"Remove"</button></td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Transition>
        <div class="grid">
            <form class="panel stack" on:submit=add id="add-member">
                <h2>"Add a member"</h2>
                <p class="help">"For someone who already has an account on this Berth."</p>
                <label for="member-email">"Email"</label>
                <input id="member-email" type="email" bind:value=email required/>
                <label for="member-role">"Role"</label>
                <select id="member-role" on:change=move |ev| role.set(event_target_value(&ev))>{role_options("deployer")}</select>
                <button type="submit" class="primary">"Add"</button>
            </form>
            <form class="panel stack" on:submit=invite id="invite">
                <h2>"Invite by link"</h2>
                <label for="invite-email">"Email (optional: the link then works for this address only)"</label>
                <input id="invite-email" type="email" bind:value=invite_email/>
                <label for="invite-role">"Role"</label>
                <select id="invite-role" on:change=move |ev| invite_role.set(event_target_value(&ev))>{role_options("deployer")}</select>
                <button type="submit">"Create invitation link"</button>
                {move || invite_link.get().map(|link| view! {
                    <p class="help">"Send this link; it is shown only now:"</p>
                    <input readonly id="invite-link" value=link aria-label="Invitation link"/>
                })}
            </form>
        </div>
    }
}

fn window_origin() -> String {
    #[cfg(feature = "hydrate")]
    {
        web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default()
    }
    #[cfg(not(feature = "hydrate"))]
    {
        String::new()
    }
}

/// The team's audit log, or every team's at `/audit` (instance admins).
#[component]
pub fn AuditPage() -> impl IntoView {
    let params = use_params_map();
    let team = Memo::new(move |_| params.read().get("team"));
    let entries = Resource::new(
        move || team.get(),
        |team| {
            let url = match team {
                Some(team) => format!("/api/v1/teams/{team}/audit?limit=200"),
                None => "/api/v1/audit?limit=200".into(),
            };
            api::get::<Vec<AuditEntry>>(url)
        },
    );
    view! {
        <Title text="Audit log · Berth"/>
        <div class="title-row">
            <h1>"Audit log"</h1>
            {move || team.get().is_some().then(|| view! { <TeamTabs/> })}
        </div>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match entries.await {
                    Err(error) => view! { <ErrorNote error/> }.into_any(),
                    Ok(list) if list.is_empty() => view! { <p class="empty">"Nothing recorded yet."</p> }.into_any(),
                    Ok(list) => view! {
                        <div class="table-wrap">
                            <table id="audit">
                                <thead><tr><th>"When (UTC)"</th><th>"Who"</th><th>"What"</th><th>"Team / app"</th><th>"From"</th><th>"Outcome"</th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|e| {
                                        let ok = e.outcome == "ok";
                                        let action = e.action.clone();
                                        let scope = [e.team.clone(), e.app.clone(), e.target.clone()].into_iter().flatten().collect::<Vec<_>>().join(" / ");
                                        view! {
                                            <tr data-action=action>
                                                <td>{format_time(e.at)}</td>
                                                <td>{e.actor}</td>
                                                <td><code>{e.action}</code></td>
                                                <td>{scope}</td>
                                                <td>{e.address.unwrap_or_default()}</td>
                                                <td><span class=if ok { "badge ok" } else { "badge bad" }>{e.outcome}</span>
                                                    {e.detail.map(|d| view! { <div class="muted small">{d}</div> })}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The signed-in user's API tokens: create (shown once), list, revoke.
#[component]
pub fn TokensPage() -> impl IntoView {
    let version = RwSignal::new(0u32);
    let tokens = Resource::new(move || version.get(), |_| api::get::<Vec<TokenInfo>>("/api/v1/tokens"));
    let outcome: Outcome = RwSignal::new(None);
    let name = RwSignal::new(String::new());
    let team = RwSignal::new(String::new());
    let role = RwSignal::new(String::new());
    let days = RwSignal::new(String::new());
    let created: RwSignal<Option<String>> = RwSignal::new(None);

    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let expires_in_secs = match days.get_untracked().trim() {
            "" => None,
            d => match d.parse::<u64>() {
                Ok(d) => Some(d * 86_400),
                Err(_) => {
                    return outcome.set(Some(Err(ApiError {
                        status: 422,
                        code: "validation".into(),
                        message: "the expiry is a whole number of days".into(),
                        field: Some("expires_in_secs".into()),
                    })));
                }
            },
        };
        let body = CreateToken {
            name: name.get_untracked().trim().to_string(),
            team: Some(team.get_untracked().trim().to_string()).filter(|t| !t.is_empty()),
            role: Some(role.get_untracked()).filter(|r| !r.is_empty()),
            expires_in_secs,
        };
        leptos::task::spawn_local(async move {
            match api::post::<_, TokenCreated>("/api/v1/tokens", &body).await {
                Ok(token) => {
                    created.set(Some(token.token));
                    outcome.set(Some(Ok("Token created. Copy it now: it is not shown again.".into())));
                }
                Err(e) => outcome.set(Some(Err(e))),
            }
            version.update(|v| *v += 1);
        });
    };
    let revoke = move |id: i64| {
        leptos::task::spawn_local(async move {
            let result = api::delete(format!("/api/v1/tokens/{id}")).await;
            outcome.set(Some(result.map(|()| format!("Token {id} revoked"))));
            version.update(|v| *v += 1);
        });
    };
    view! {
        <Title text="API tokens · Berth"/>
        <h1>"API tokens"</h1>
        {outcome_view(outcome)}
        {move || created.get().map(|token| view! { <input readonly id="new-token" value=token aria-label="New token"/> })}
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match tokens.await {
                    Err(error) => view! { <ErrorNote error/> }.into_any(),
                    Ok(list) => view! {
                        <div class="table-wrap">
                            <table id="tokens">
                                <thead><tr><th>"Name"</th><th>"Kind"</th><th>"Scope"</th><th>"Created"</th><th>"Expires"</th><th>"Last used"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|t| {
                                        let id = t.id;
                                        let scope = match (t.team, t.role) {
                                            (Some(team), Some(role)) => format!("{team} as {role}"),
                                            (Some(team), None) => team,
                                            (None, Some(role)) => format!("all teams, at most {role}"),
                                            (None, None) => "everything you can do".into(),
                                        };
                                        let token_name = t.name.clone();
                                        view! {
                                            <tr data-token=token_name>
                                                <td>{t.name}</td>
                                                <td>{t.kind}</td>
                                                <td>{scope}</td>
                                                <td>{format_time(t.created_at)}</td>
                                                <td>{t.expires_at.map_or("never".into(), format_time)}</td>
                                                <td>{t.last_used_at.map_or("never".into(), format_time)}</td>
                                                <td>{if t.revoked {
                                                    view! { <span class="badge">"revoked"</span> }.into_any()
                                                } else {
                                                    view! { <button type="button" class="small" on:click=move |_| revoke(id)>"Revoke"</button> }.into_any()
                                                }}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Transition>
        <form class="panel stack" on:submit=create id="create-token">
            <h2>"New token"</h2>
            <label for="token-name">"Name"</label>
            <input id="token-name" bind:value=name required placeholder="ci"/>
            <label for="token-team">"Team (optional: limits the token to one team)"</label>
            <input id="token-team" bind:value=team/>
            <label for="token-role">"Role cap (optional; never above your own)"</label>
            <select id="token-role" on:change=move |ev| role.set(event_target_value(&ev))>
                <option value="" selected>"your role"</option>
                {role_options("")}
            </select>
            <label for="token-days">"Expires after (days, optional)"</label>
            <input id="token-days" type="number" min="1" bind:value=days/>
            <button type="submit" class="primary">"Create token"</button>
        </form>
    }
}

/// Where an invitation link leads: create an account (or join with an existing one) and sign in.
#[component]
pub fn AcceptInvite() -> impl IntoView {
    let params = use_params_map();
    let token = move || params.read().get("token").unwrap_or_default();
    let email = RwSignal::new(String::new());
    let name = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let outcome: Outcome = RwSignal::new(None);
    let accept = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = AcceptInviteBody {
            email: email.get_untracked().trim().to_string(),
            name: Some(name.get_untracked().trim().to_string()).filter(|n| !n.is_empty()),
            password: password.get_untracked(),
        };
        let url = format!("/api/v1/invites/{}/accept", token());
        leptos::task::spawn_local(async move {
            let result = api::post::<_, serde_json::Value>(url, &body).await;
            outcome.set(Some(result.map(|_| "Welcome aboard. You can sign in now.".into())));
        });
    };
    view! {
        <Title text="Join a team · Berth"/>
        <main id="content" class="narrow">
            <h1 class="brand-big">"Berth"</h1>
            <form class="panel stack" on:submit=accept id="accept-invite">
                <h2>"Join a team"</h2>
                {outcome_view(outcome)}
                <label for="invite-accept-email">"Email"</label>
                <input id="invite-accept-email" type="email" bind:value=email required/>
                <label for="invite-accept-name">"Name"</label>
                <input id="invite-accept-name" bind:value=name/>
                <label for="invite-accept-password">"Password (new account: at least 12 characters; existing account: its password)"</label>
                <input id="invite-accept-password" type="password" bind:value=password required/>
                <button type="submit" class="primary">"Join"</button>
                <p><a href="/signin">"Sign in"</a></p>
            </form>
        </main>
    }
}
