//! How the CLI shows things: tables of plain columns (no borders, aligned however long a value
//! is), relative times, release progress and log lines. Functions from wire types to text;
//! printing them is the commands' job.

use std::error::Error;

use berth_wire::api::{AppDetail, AppSummary, HostInfo, LogLine, QuotaInfo, ReleaseEvent, ReleaseInfo};
use berth_wire::identity::{AuditEntry, Me, Member, TeamRole, TokenInfo};
use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};

/// Spaces between two columns.
const COLUMN_GAP: u16 = 2;

/// A table of plain columns under a header row, as lines without trailing spaces. The columns
/// at the indexes in `right_aligned` (numbers) align right. Lines are never wrapped to the
/// terminal's width, so piping to `grep` or `awk` sees one record per line.
fn table(header: &[&str], right_aligned: &[usize], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec()).add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, COLUMN_GAP));
        if right_aligned.contains(&column.index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.trim_fmt()
}

/// "3m ago" for a Unix-millisecond time, seen at `now_ms`; a time in the future counts as now.
pub(crate) fn ago(at_ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - at_ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// "in 3m" for a Unix-millisecond time ahead of `now_ms`; a time past counts as "now".
pub(crate) fn until(at_ms: i64, now_ms: i64) -> String {
    let secs = (at_ms - now_ms).max(0) / 1000;
    match secs {
        0 => "now".into(),
        1..60 => format!("in {secs}s"),
        60..3600 => format!("in {}m", secs / 60),
        3600..86400 => format!("in {}h", secs / 3600),
        _ => format!("in {}d", secs / 86400),
    }
}

/// A moment relative to now: "in 89d", or "3h ago" once past.
pub(crate) fn date(at_ms: i64) -> String {
    let now = now_ms();
    if at_ms >= now { until(at_ms, now) } else { ago(at_ms, now) }
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// One progress event of a release being followed.
pub(crate) fn release_event(event: &ReleaseEvent) -> String {
    format!("  {:<17} {}", event.phase, event.message)
}

/// One log line, prefixed with its replica and release.
pub(crate) fn log_line(log: &LogLine) -> String {
    format!("{} r{} | {}", log.replica, log.release, log.line)
}

/// The innermost cause of an error (`Connection refused (os error 111)`): what a person can act
/// on, without the layers of "error sending request for url …" around it.
pub(crate) fn root_cause(error: &(dyn Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// `berth apps list`.
pub(crate) fn apps_table(apps: &[AppSummary]) -> String {
    let rows = apps.iter().map(|app| {
        vec![
            app.name.clone(),
            app.serving_release.map_or("-".into(), |number| number.to_string()),
            format!("{}/{}", app.replicas_ready, app.replicas_desired),
            app.image.clone(),
            app.url.clone(),
        ]
    });
    table(&["NAME", "RELEASE", "READY", "IMAGE", "URL"], &[1, 2], rows)
}

/// The newest release's limits and environment, as `berth apps show` prints them: plain
/// variables with their values (or `(hidden)` for callers who may not see them), secret ones as
/// `(secret, set)`: the API never returns a secret's value.
fn release_settings(release: &ReleaseInfo) -> String {
    let spec = &release.spec;
    let cpu = spec.cpu_millis.map_or("no CPU limit".to_string(), |m| format!("CPU {m}m"));
    let memory = spec.memory_mb.map_or("no memory limit".to_string(), |mb| format!("memory {mb} MiB"));
    let mut lines = vec![format!("release {}: {cpu}, {memory}", release.number)];
    let constraints: Vec<String> = spec.constraints.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !constraints.is_empty() {
        lines.push(format!("on hosts with {}", constraints.join(",")));
    }
    // By name, then the line shown for it.
    let mut variables: Vec<(&String, String)> = spec
        .env
        .iter()
        .map(|(name, value)| match release.env_hidden {
            true => (name, format!("  {name} (hidden)")),
            false => (name, format!("  {name}={value}")),
        })
        .chain(spec.secrets.keys().map(|name| (name, format!("  {name} (secret, set)"))))
        .collect();
    variables.sort();
    if variables.is_empty() {
        lines.push("no environment variables".into());
    }
    lines.extend(variables.into_iter().map(|(_, line)| line));
    lines.join("\n")
}

/// `berth apps show`: the summary, the newest release's settings, then the replicas and the
/// releases.
pub(crate) fn app_detail(app: &AppDetail) -> String {
    let summary = &app.summary;
    let serving = summary.serving_release.map_or("none".into(), |number| number.to_string());
    let replicas = app.replicas.iter().map(|replica| {
        let container = replica.container_id.as_deref().map_or("-", |id| &id[..id.len().min(12)]);
        vec![
            replica.id.clone(),
            replica.release.to_string(),
            replica.host.clone(),
            replica.phase.as_str().into(),
            replica.restarts.to_string(),
            container.into(),
            replica.message.clone().unwrap_or_default(),
        ]
    });
    let releases = app.releases.iter().map(|release| {
        let note = match (release.rollback_of, &release.message) {
            (Some(of), _) => format!("rollback to {of}"),
            (None, Some(message)) => message.clone(),
            (None, None) => String::new(),
        };
        vec![release.number.to_string(), release.state.as_str().into(), release.spec.image.clone(), note]
    });
    let settings = app.releases.first().map(|newest| format!("\n\n{}", release_settings(newest))).unwrap_or_default();
    format!(
        "{}  ({})\nserving release {serving}, {}/{} replicas ready, image {}{settings}\n\nREPLICAS\n{}\n\nRELEASES\n{}",
        summary.name,
        summary.url,
        summary.replicas_ready,
        summary.replicas_desired,
        summary.image,
        table(&["ID", "RELEASE", "HOST", "STATE", "RESTARTS", "CONTAINER", "MESSAGE"], &[1, 4], replicas),
        table(&["NUMBER", "STATE", "IMAGE", "MESSAGE"], &[0], releases),
    )
}

/// `berth status`: the store, the leader, then every instance and ingress node (a joined node
/// not reporting is listed as silent).
pub(crate) fn status(status: &berth_wire::api::ControlPlaneStatus) -> String {
    let rows = status.instances.iter().map(|instance| {
        let routes = match status.routes_version - instance.routes_applied {
            _ if instance.leader => format!("{} (publishes)", status.routes_version),
            0 => format!("{}", instance.routes_applied),
            behind => format!("{} ({behind} behind)", instance.routes_applied),
        };
        let role = match instance.kind.as_str() {
            _ if instance.leader => "leader",
            "ingress" => "ingress node",
            _ => "follower",
        };
        vec![
            instance.id.clone(),
            role.into(),
            instance.version.clone(),
            instance.address.clone(),
            format!("{:.1}s ago", instance.silent_ms as f64 / 1000.0),
            routes,
        ]
    });
    let reporting: std::collections::HashSet<&str> = status.instances.iter().map(|i| i.id.as_str()).collect();
    let silent = status
        .ingress_nodes
        .iter()
        .map(|name| format!("ingress/{name}"))
        .filter(|id| !reporting.contains(id.as_str()))
        .map(|id| vec![id, "ingress node".into(), "-".into(), "-".into(), "silent".into(), "-".into()])
        .collect::<Vec<_>>();
    let rows = rows.chain(silent);
    let leader = match &status.leader {
        Some(leader) => format!("leader {leader} (term {})", status.term),
        None => format!("no leader right now (term {}): one takes over within seconds", status.term),
    };
    format!(
        "store: {}; {leader}; answered by {}\n\n{}",
        status.engine,
        status.answered_by,
        table(&["INSTANCE", "ROLE", "VERSION", "ADDRESS", "LAST SEEN", "ROUTE TABLE"], &[], rows)
    )
}

pub(crate) fn hosts_table(hosts: &[HostInfo]) -> String {
    let rows = hosts.iter().map(|host| {
        let labels: Vec<String> = host.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        vec![
            host.name.clone(),
            host.state.as_str().into(),
            host.address.clone(),
            format!("{}/{}m", host.allocated.cpu_millis, host.capacity.cpu_millis),
            format!("{}/{}", host.allocated.memory_mb, host.capacity.memory_mb),
            host.replicas.len().to_string(),
            labels.join(","),
        ]
    });
    table(&["NAME", "STATE", "ADDRESS", "CPU", "MEMORY MiB", "REPLICAS", "LABELS"], &[3, 4, 5], rows)
}

/// `berth hosts show`: the host and its capacity, then its replicas.
pub(crate) fn host_detail(host: &HostInfo) -> String {
    let replicas = host.replicas.iter().map(|replica| {
        vec![
            replica.replica.clone(),
            format!("{}/{}", replica.team, replica.app),
            replica.release.to_string(),
            replica.phase.as_str().into(),
        ]
    });
    format!(
        "{} ({}, {}{})\nCPU {}m of {}m requested, memory {} of {} MiB\n\n{}",
        host.name,
        host.state.as_str(),
        host.address,
        if host.local { ", in the server" } else { "" },
        host.allocated.cpu_millis,
        host.capacity.cpu_millis,
        host.allocated.memory_mb,
        host.capacity.memory_mb,
        table(&["REPLICA", "APP", "RELEASE", "STATE"], &[2], replicas),
    )
}

/// `berth whoami`: the user, then each team and role, indented.
pub(crate) fn me(me: &Me) -> String {
    let admin = if me.instance_admin { " (instance admin)" } else { "" };
    let mut text = format!("{} <{}>{admin}", me.name, me.email);
    if !me.teams.is_empty() {
        let mut teams = Table::new();
        teams.load_preset(NOTHING).add_rows(me.teams.iter().map(|team| vec![team.team.clone(), team.role.clone()]));
        for column in teams.column_iter_mut() {
            let indent = if column.index == 0 { 2 } else { 0 };
            column.set_padding((indent, COLUMN_GAP));
        }
        text.push('\n');
        text.push_str(&teams.trim_fmt());
    }
    text
}

/// `berth teams list`.
pub(crate) fn teams_table(teams: &[TeamRole]) -> String {
    table(&["TEAM", "ROLE"], &[], teams.iter().map(|team| vec![team.team.clone(), team.role.clone()]))
}

/// `berth teams quota`: each resource, what the team's apps declare and the limit.
pub(crate) fn quota_table(info: &QuotaInfo) -> String {
    let limit = |v: Option<u64>, unit: &str| v.map_or("unlimited".to_string(), |v| format!("{v}{unit}"));
    let rows = [
        vec!["replicas".to_string(), info.used.replicas.to_string(), limit(info.quota.replicas, "")],
        vec!["cpu".into(), format!("{}m", info.used.cpu_millis), limit(info.quota.cpu_millis, "m")],
        vec!["memory".into(), format!("{} MiB", info.used.memory_mb), limit(info.quota.memory_mb, " MiB")],
    ];
    table(&["RESOURCE", "USED", "QUOTA"], &[1, 2], rows)
}

/// `berth members list`.
pub(crate) fn members_table(members: &[Member]) -> String {
    let rows = members.iter().map(|member| vec![member.email.clone(), member.name.clone(), member.role.clone()]);
    table(&["EMAIL", "NAME", "ROLE"], &[], rows)
}

/// `berth tokens list`, with states and times as of `now_ms`.
pub(crate) fn tokens_table(tokens: &[TokenInfo], now_ms: i64) -> String {
    let rows = tokens.iter().map(|token| {
        let state = if token.revoked {
            "revoked"
        } else if token.expires_at.is_some_and(|at| at <= now_ms) {
            "expired"
        } else {
            "active"
        };
        vec![
            token.id.to_string(),
            token.name.clone(),
            token.kind.clone(),
            token.team.clone().unwrap_or_else(|| "-".into()),
            token.role.clone().unwrap_or_else(|| "-".into()),
            state.into(),
            token.last_used_at.map_or("never".into(), |at| ago(at, now_ms)),
        ]
    });
    table(&["ID", "NAME", "KIND", "TEAM", "ROLE", "STATE", "LAST USED"], &[0], rows)
}

/// `berth audit`, with times as of `now_ms`.
pub(crate) fn audit_table(entries: &[AuditEntry], now_ms: i64) -> String {
    let rows = entries.iter().map(|entry| {
        let what = [entry.team.as_deref(), entry.app.as_deref(), entry.target.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("/");
        vec![
            ago(entry.at, now_ms),
            entry.actor.clone(),
            entry.action.clone(),
            what,
            entry.outcome.clone(),
            entry.address.clone().unwrap_or_else(|| "-".into()),
        ]
    });
    table(&["WHEN", "WHO", "ACTION", "WHAT", "OUTCOME", "ADDRESS"], &[], rows)
}

/// An app's builds, newest first.
pub(crate) fn builds_table(builds: &[berth_wire::builds::BuildInfo], now_ms: i64) -> String {
    let rows = builds.iter().map(|b| {
        let took = match (b.started_at.or(Some(b.created_at)), b.finished_at) {
            (Some(start), Some(end)) => format!("{}s", (end - start).max(0) / 1000),
            _ => "-".into(),
        };
        vec![
            b.number.to_string(),
            b.state.as_str().to_string(),
            b.commit.chars().take(12).collect(),
            b.pusher.clone(),
            ago(b.created_at, now_ms),
            took,
            b.release.map_or_else(|| "-".into(), |r| r.to_string()),
            b.message.clone().unwrap_or_default(),
        ]
    });
    table(&["BUILD", "STATE", "COMMIT", "BY", "CREATED", "TOOK", "RELEASE", "MESSAGE"], &[0, 5, 6], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, serving_release: Option<u32>, ready: u32, image: &str) -> AppSummary {
        AppSummary {
            team: "main".into(),
            name: name.into(),
            url: format!("http://{name}.localhost:8080"),
            serving_release,
            replicas_desired: 2,
            replicas_ready: ready,
            image: image.into(),
            created_at: 0,
        }
    }

    /// Where each column of `header` starts and ends (header words are single words here).
    fn column_spans(header: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut start = None;
        for (at, character) in header.char_indices().chain([(header.len(), ' ')]) {
            match (start, character == ' ') {
                (None, false) => start = Some(at),
                (Some(from), true) => {
                    spans.push((from, at));
                    start = None;
                }
                _ => {}
            }
        }
        spans
    }

    #[test]
    fn a_table_with_a_long_name_stays_aligned() {
        let long_name = "a-forty-character-application-name-00040";
        assert_eq!(long_name.len(), 40);
        let apps = [
            app("web", Some(3), 2, "registry.example/web:v3"),
            app(long_name, None, 0, "registry.example/a-much-longer-image-name:v12"),
            app("api", Some(12), 1, "api:v1"),
        ];
        let rendered = apps_table(&apps);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), 4, "{rendered}");
        // Widths grow to fit: NAME spans the long name, so every later column starts after it.
        let (header, rows) = (lines[0], &lines[1..]);
        assert!(header.starts_with("NAME"), "{rendered}");
        let release_at = header.find("RELEASE").expect("a RELEASE column");
        assert!(release_at >= long_name.len() + 2, "{rendered}");
        // Left-aligned columns (NAME, IMAGE, URL) start where their header starts; right-aligned
        // ones (RELEASE, READY) end where their header ends.
        let spans = column_spans(header);
        let right_aligned = [1, 2];
        for (row, app) in rows.iter().zip(&apps) {
            let cells = [
                app.name.clone(),
                app.serving_release.map_or("-".into(), |number| number.to_string()),
                format!("{}/{}", app.replicas_ready, app.replicas_desired),
                app.image.clone(),
                app.url.clone(),
            ];
            for (column, (cell, &(start, end))) in cells.iter().zip(&spans).enumerate() {
                let placed = if right_aligned.contains(&column) {
                    end >= cell.len() && row.get(end - cell.len()..end) == Some(cell.as_str())
                } else {
                    row.get(start..start + cell.len()) == Some(cell.as_str())
                };
                assert!(placed, "column {column} ({cell:?}) is out of line in:\n{rendered}");
            }
            assert!(!row.ends_with(' '), "trailing spaces in {row:?}");
        }
    }

    #[test]
    fn the_last_column_has_no_trailing_spaces() {
        let members = [
            Member { email: "viewer@example.com".into(), name: "V".into(), role: "deployer".into() },
            Member { email: "o@example.com".into(), name: "Owner Person".into(), role: "owner".into() },
        ];
        let rendered = members_table(&members);
        assert_eq!(rendered.lines().count(), 3, "{rendered}");
        assert!(rendered.lines().any(|line| line.starts_with("viewer@example.com") && line.ends_with("deployer")));
    }

    #[test]
    fn app_show_prints_the_environment_but_never_a_hidden_or_secret_value() {
        let mut spec = berth_wire::AppSpec {
            image: "web:1".into(),
            port: 8080,
            replicas: 2,
            env: [("LOG".to_string(), "debug".to_string()), ("MOOD".to_string(), "(sunny)".to_string())].into(),
            secrets: [("TOKEN".to_string(), String::new())].into(),
            health_path: None,
            cpu_millis: Some(250),
            memory_mb: None,
            constraints: [("region".to_string(), "eu".to_string())].into(),
            privileges: Default::default(),
            protocol: Default::default(),
        };
        let release = |spec: &berth_wire::AppSpec, env_hidden| ReleaseInfo {
            number: 3,
            spec: spec.clone(),
            env_hidden,
            state: berth_wire::api::ReleaseState::Serving,
            message: None,
            rollback_of: None,
            created_at: 0,
            finished_at: None,
            events: Vec::new(),
        };
        let shown = release_settings(&release(&spec, false));
        assert_eq!(
            shown,
            "release 3: CPU 250m, no memory limit\non hosts with region=eu\n  LOG=debug\n  MOOD=(sunny)\n  TOKEN (secret, set)"
        );
        // A viewer: names only.
        spec.env.insert("LOG".into(), String::new());
        let shown = release_settings(&release(&spec, true));
        assert!(shown.contains("  LOG (hidden)") && !shown.contains("LOG="), "{shown}");
    }

    #[test]
    fn ago_formats_each_range() {
        let now = 1_000_000_000_000;
        let cases = [
            (now, "0s ago"),
            (now + 5_000, "0s ago"),
            (now - 59_999, "59s ago"),
            (now - 60_000, "1m ago"),
            (now - 3_599_000, "59m ago"),
            (now - 3_600_000, "1h ago"),
            (now - 86_399_000, "23h ago"),
            (now - 86_400_000, "1d ago"),
            (now - 10 * 86_400_000, "10d ago"),
        ];
        for (at, expected) in cases {
            assert_eq!(ago(at, now), expected, "{} ms before now", now - at);
        }
    }

    #[test]
    fn the_teams_of_whoami_are_indented_under_the_user() {
        let user = Me {
            id: 1,
            email: "a@example.com".into(),
            name: "A".into(),
            instance_admin: true,
            teams: vec![
                TeamRole { team: "main".into(), role: "owner".into() },
                TeamRole { team: "a-much-longer-team".into(), role: "viewer".into() },
            ],
        };
        let rendered = me(&user);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "A <a@example.com> (instance admin)");
        assert_eq!(lines[1].find("owner"), lines[2].find("viewer"), "{rendered}");
        assert!(lines[1].starts_with("  main"), "{rendered}");
    }
}
