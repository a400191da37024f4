//! Validation shared by the services: names, app specs, labels.

use std::collections::BTreeMap;

use berth_wire::AppSpec;

use super::{Result, ServiceError, invalid};
use crate::auth::Principal;

pub const MAX_REPLICAS: u32 = 100;

/// An app name is one DNS label, because it becomes the first label of the app's host name.
pub fn validate_app_name(name: &str) -> Result<()> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            "name",
            format!(
                "{name:?} is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'"
            ),
        ));
    }
    Ok(())
}

/// A shell-style variable name (environment variables, build arguments): letters, digits and
/// `_`, not starting with a digit.
pub fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An app's environment, bounded: it travels in every desired list and every container's start.
const MAX_ENV_ENTRIES: usize = 1000;
const MAX_ENV_BYTES: usize = 256 * 1024;

pub fn validate_spec(spec: &AppSpec) -> Result<()> {
    let image = spec.image.as_str();
    if image.is_empty() || image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("image", "the image must be a non-empty reference without spaces, at most 255 characters"));
    }
    if spec.port == 0 {
        return Err(invalid("port", "the port must be between 1 and 65535"));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(invalid("replicas", format!("at most {MAX_REPLICAS} replicas")));
    }
    // Secrets count as stored (sealed, a third larger): that is what travels.
    let all = spec.env.iter().chain(&spec.secrets);
    let total: usize = all.map(|(k, v)| k.len() + v.len()).sum();
    if spec.env.len() + spec.secrets.len() > MAX_ENV_ENTRIES || total > MAX_ENV_BYTES {
        return Err(invalid(
            "env",
            format!("at most {MAX_ENV_ENTRIES} variables and {} KiB in all", MAX_ENV_BYTES / 1024),
        ));
    }
    validate_variables("env", &spec.env)?;
    validate_variables("secrets", &spec.secrets)?;
    if let Some(path) = &spec.health_path
        && (!path.starts_with('/') || path.len() > 1024 || path.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(invalid("health_path", "the health path must start with '/' and contain no spaces"));
    }
    if let Some(cpu) = spec.cpu_millis
        && !(10..=256_000).contains(&cpu)
    {
        return Err(invalid("cpu_millis", "the CPU limit must be between 10 and 256000 millicores"));
    }
    for mount in &spec.privileges.mounts {
        if !mount.source.starts_with('/')
            || !mount.target.starts_with('/')
            || mount.source.contains(':')
            || mount.target.contains(':')
        {
            return Err(invalid(
                "privileges",
                format!("{} -> {}: mounts need absolute paths without ':'", mount.source, mount.target),
            ));
        }
    }
    if let Some(cap) =
        spec.privileges.cap_add.iter().find(|c| c.is_empty() || !c.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        return Err(invalid("privileges", format!("{cap:?} is not a capability name (like NET_ADMIN)")));
    }
    for (key, value) in &spec.constraints {
        if !valid_label(key) || !valid_label(value) {
            return Err(invalid(
                "constraints",
                format!("{key}={value} is not a valid label (letters, digits, '.', '_', '-', '/')"),
            ));
        }
    }
    if let Some(memory) = spec.memory_mb
        && !(6..=4_194_304).contains(&memory)
    {
        return Err(invalid("memory_mb", "the memory limit must be between 6 MiB and 4 TiB"));
    }
    Ok(())
}

/// A team runs only images it may have: `berth/<team>/...` images are Berth's builds of that
/// team's apps, so no other team may name one; and an image is given by name, never by an image
/// ID (Docker would resolve one, or a prefix of one, to any image on the host, another team's
/// build included).
pub fn validate_image_owner(team: &str, image: &str) -> Result<()> {
    // Docker Hub's names for a local `berth/...` image are the same image.
    let mut local = image;
    for hub in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        local = local.strip_prefix(hub).unwrap_or(local);
    }
    if let Some(rest) = local.strip_prefix("berth/") {
        let owner = rest.split('/').next().unwrap_or("");
        if owner != team {
            return Err(invalid(
                "image",
                format!("{image} is a build of team {owner}: images under berth/ run only in the team that built them"),
            ));
        }
    }
    let id = image.strip_prefix("sha256:").unwrap_or(image);
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "image",
            format!("{image:?} looks like an image ID: give the image by name (with a tag or @sha256: digest)"),
        ));
    }
    Ok(())
}

/// Privileged options amount to root on the host, and so does releasing new code or config with
/// them: only instance admins may. Anyone who may deploy can still scale such an app (a release
/// that differs from the latest in its replica count only).
pub(super) fn require_privilege_grant(principal: &Principal, latest: Option<&AppSpec>, next: &AppSpec) -> Result<()> {
    if next.privileges.is_empty() || principal.instance_admin {
        return Ok(());
    }
    let only_scaled = latest.is_some_and(|latest| AppSpec { replicas: next.replicas, ..latest.clone() } == *next);
    if only_scaled {
        return Ok(());
    }
    Err(ServiceError::Forbidden(
        "this release has privileged options (privileged mode, host network, host mounts or capabilities): only instance admins may release it".into(),
    ))
}

/// Names a shell takes, values without NUL: the rules of plain and secret variables alike.
pub fn validate_variables(field: &str, variables: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in variables {
        if key.len() > 256 {
            return Err(invalid(field, "variable names have at most 256 characters"));
        }
        if !valid_variable_name(key) {
            return Err(invalid(
                field,
                format!("{key:?} is not a valid variable name (letters, digits, '_'; not starting with a digit)"),
            ));
        }
        if value.contains('\0') {
            return Err(invalid(field, format!("the value of {key} contains a NUL byte")));
        }
    }
    Ok(())
}

/// Host labels and constraints: 1-63 characters of letters, digits, `.`, `_`, `-`, `/`.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            image: "hello:v1".into(),
            port: 8080,
            replicas: 2,
            env: BTreeMap::new(),
            secrets: Default::default(),
            health_path: Some("/up".into()),
            cpu_millis: None,
            memory_mb: None,
            constraints: BTreeMap::new(),
            privileges: Default::default(),
            protocol: Default::default(),
        }
    }

    fn field_of(result: Result<()>) -> String {
        match result {
            Err(ServiceError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn app_names_are_dns_labels() {
        assert!(validate_app_name("web").is_ok());
        assert!(validate_app_name("web-2").is_ok());
        for bad in ["", "Web", "-web", "web-", "we_b", "web.app", &"a".repeat(64)] {
            assert_eq!(field_of(validate_app_name(bad)), "name", "{bad:?}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate_spec(&spec()).is_ok());
        assert_eq!(field_of(validate_spec(&AppSpec { image: "".into(), ..spec() })), "image");
        assert_eq!(field_of(validate_spec(&AppSpec { image: "a b".into(), ..spec() })), "image");
        assert_eq!(field_of(validate_spec(&AppSpec { port: 0, ..spec() })), "port");
        assert_eq!(field_of(validate_spec(&AppSpec { replicas: 1000, ..spec() })), "replicas");
        assert_eq!(field_of(validate_spec(&AppSpec { health_path: Some("up".into()), ..spec() })), "health_path");
        assert_eq!(field_of(validate_spec(&AppSpec { memory_mb: Some(1), ..spec() })), "memory_mb");
        assert_eq!(field_of(validate_spec(&AppSpec { cpu_millis: Some(1), ..spec() })), "cpu_millis");
        let env = BTreeMap::from([("1BAD".to_string(), "x".to_string())]);
        assert_eq!(field_of(validate_spec(&AppSpec { env, ..spec() })), "env");
    }

    #[test]
    fn a_team_runs_its_own_builds_and_images_by_name_only() {
        assert!(validate_image_owner("main", "berth/main/web:abc-1").is_ok());
        assert!(validate_image_owner("main", "nginx:1.27").is_ok());
        assert!(validate_image_owner("main", "reg.example:5000/berth/other/web:1").is_ok());
        assert!(validate_image_owner("main", "hello@sha256:0123456789abcdef").is_ok());
        for stolen in [
            "berth/other/web:abc-1",
            "berth/mainly/web:1",
            "berth/",
            "docker.io/berth/other/web:1",
            "index.docker.io/berth/other/w",
        ] {
            assert_eq!(field_of(validate_image_owner("main", stolen)), "image", "{stolen}");
        }
        for id in ["sha256:0123456789abcdef", "0123abcd", "DEADBEEF"] {
            assert_eq!(field_of(validate_image_owner("main", id)), "image", "{id}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any environment is validated without a panic, and an accepted one has only
            /// variable names a shell would take and values without NUL.
            #[test]
            fn any_environment_is_judged(env in proptest::collection::btree_map(".{0,40}", ".{0,80}", 0..8)) {
                let candidate = AppSpec { env: env.clone(), ..spec() };
                if validate_spec(&candidate).is_ok() {
                    for (key, value) in &env {
                        prop_assert!(valid_variable_name(key) && !value.contains('\0'), "{key:?}");
                    }
                }
            }
        }
    }
}
