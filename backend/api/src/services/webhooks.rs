//! Webhooks: a provider's push event as a second way to build. The signature is checked over the
//! raw body in constant time before anything in it is read; only the configured repository and
//! the deploy branch build, exactly the pushed commit, once per delivery id. Every delivery's
//! verdict is logged per app.

use berth_control::builds::{BuildOrder, Context, StartError};
use berth_store::WebhookRow;
use berth_wire::builds::{CreateWebhook, WebhookAccepted, WebhookDelivery, WebhookInfo, WebhookProvider};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Result, ServiceError, Services, invalid};
use crate::auth::{Action, Principal};

/// The headers of a delivery that matter, by name (lower-case).
pub trait Headers: Sync {
    fn get(&self, name: &str) -> Option<&str>;
}

/// What Berth does with a delivery it verified.
#[derive(Debug)]
pub enum WebhookAnswer {
    Accepted(WebhookAccepted),
    /// Verified, but nothing to build (another branch, a ping); the reason is logged.
    Ignored(String),
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    repository: Option<Repository>,
    /// GitLab's name for the repository.
    #[serde(default)]
    project: Option<Project>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("BUG: HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks the delivery's signature (or GitLab's token) with the webhook's secret.
fn verify(provider: WebhookProvider, secret: &str, headers: &dyn Headers, body: &[u8]) -> bool {
    match provider {
        WebhookProvider::Github => headers
            .get("x-hub-signature-256")
            .and_then(|s| s.strip_prefix("sha256="))
            .is_some_and(|given| equal(&given.to_ascii_lowercase(), &hmac_hex(secret, body))),
        WebhookProvider::Gitea => {
            let given = headers
                .get("x-gitea-signature")
                .or_else(|| headers.get("x-forgejo-signature"))
                .or_else(|| headers.get("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")));
            given.is_some_and(|given| equal(&given.to_ascii_lowercase(), &hmac_hex(secret, body)))
        }
        WebhookProvider::Gitlab => headers.get("x-gitlab-token").is_some_and(|given| equal(given, secret)),
    }
}

/// `(event, delivery id)` as the provider names them.
fn event_and_delivery(provider: WebhookProvider, headers: &dyn Headers) -> (Option<String>, Option<String>) {
    let first = |names: &[&str]| names.iter().find_map(|n| headers.get(n)).map(|v| v.chars().take(200).collect());
    match provider {
        WebhookProvider::Github => (first(&["x-github-event"]), first(&["x-github-delivery"])),
        WebhookProvider::Gitea => (
            first(&["x-gitea-event", "x-forgejo-event", "x-github-event"]),
            first(&["x-gitea-delivery", "x-forgejo-delivery", "x-github-delivery"]),
        ),
        WebhookProvider::Gitlab => {
            (first(&["x-gitlab-event"]), first(&["x-gitlab-event-uuid", "x-gitlab-webhook-uuid"]))
        }
    }
}

fn is_push(provider: WebhookProvider, event: Option<&str>) -> bool {
    match provider {
        WebhookProvider::Gitlab => event == Some("Push Hook"),
        _ => event == Some("push"),
    }
}

impl Services {
    async fn create_webhook_inner(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        input: CreateWebhook,
    ) -> Result<WebhookInfo> {
        let app = self.find_app(principal, team, name, Action::DeployApps).await?;
        let repository = input.repository.trim();
        let valid = !repository.is_empty()
            && repository.len() <= 300
            && repository.contains('/')
            && repository.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid {
            return Err(invalid("repository", format!("{repository:?} is not a repository name like owner/name")));
        }
        if self.store.build_settings(app.id).await?.git_url.is_none() {
            return Err(invalid(
                "repository",
                format!(
                    "{name} has no git URL to fetch pushed commits from: set one first (berth builds settings {name} --git-url URL)"
                ),
            ));
        }
        let id = hex::encode(rand::random::<[u8; 12]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let row = self.store.create_webhook(&id, app.id, input.provider, repository, &secret).await?;
        let mut info = webhook_info(&row);
        info.secret = Some(secret);
        Ok(info)
    }

    pub async fn create_webhook(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
        input: CreateWebhook,
    ) -> Result<WebhookInfo> {
        let target = format!("{} {}", input.provider.as_str(), input.repository.chars().take(300).collect::<String>());
        let result = self.create_webhook_inner(principal, team, name, input).await;
        self.audit(Some(principal), "create_webhook", Some(team), Some(name), Some(&target), &result).await?;
        result
    }

    pub async fn list_webhooks(&self, principal: &Principal, team: &str, name: &str) -> Result<Vec<WebhookInfo>> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        Ok(self.store.webhooks(app.id).await?.iter().map(webhook_info).collect())
    }

    pub async fn delete_webhook(&self, principal: &Principal, team: &str, name: &str, id: &str) -> Result<()> {
        let result = async {
            let app = self.find_app(principal, team, name, Action::DeployApps).await?;
            if !self.store.delete_webhook(app.id, id).await? {
                return Err(ServiceError::NotFound(format!("webhook {id} of {name} not found")));
            }
            Ok(())
        }
        .await;
        self.audit(Some(principal), "delete_webhook", Some(team), Some(name), Some(id), &result).await?;
        result
    }

    pub async fn webhook_deliveries(
        &self,
        principal: &Principal,
        team: &str,
        name: &str,
    ) -> Result<Vec<WebhookDelivery>> {
        let app = self.find_app(principal, team, name, Action::ViewApps).await?;
        Ok(self.store.deliveries(app.id).await?)
    }

    /// One delivery to `POST /hooks/{provider}/{id}`.
    pub async fn webhook_delivery(
        &self,
        provider: &str,
        id: &str,
        headers: &dyn Headers,
        body: &[u8],
    ) -> Result<WebhookAnswer> {
        let unknown = || ServiceError::NotFound("no such webhook".into());
        let hook = self.store.webhook(id).await?.ok_or_else(unknown)?;
        if hook.provider().as_str() != provider {
            return Err(unknown());
        }
        let (event, delivery) = event_and_delivery(hook.provider(), headers);
        let answer = self.verified_delivery(&hook, headers, body, event.as_deref(), delivery.as_deref()).await;
        let (verdict, reason, build) = match &answer {
            Ok(WebhookAnswer::Accepted(accepted)) => {
                ("accepted", format!("building {}", accepted.commit), Some(accepted.build as i64))
            }
            Ok(WebhookAnswer::Ignored(reason)) => ("ignored", reason.clone(), None),
            Err(error) => ("refused", error.to_string(), None),
        };
        self.store.add_delivery(&hook.id, delivery.as_deref(), verdict, &reason, build).await?;
        answer
    }

    async fn verified_delivery(
        &self,
        hook: &WebhookRow,
        headers: &dyn Headers,
        body: &[u8],
        event: Option<&str>,
        delivery: Option<&str>,
    ) -> Result<WebhookAnswer> {
        if !verify(hook.provider(), &hook.secret, headers, body) {
            return Err(ServiceError::Unauthorized("the signature does not match the webhook's secret".into()));
        }
        if !is_push(hook.provider(), event) {
            return Ok(WebhookAnswer::Ignored(format!("event {:?} is not a push", event.unwrap_or("none"))));
        }
        let payload: PushPayload =
            serde_json::from_slice(body).map_err(|e| invalid("body", format!("not a push payload: {e}")))?;
        let repository = payload
            .repository
            .map(|r| r.full_name)
            .or(payload.project.map(|p| p.path_with_namespace))
            .unwrap_or_default();
        if !repository.eq_ignore_ascii_case(&hook.repository) {
            return Ok(WebhookAnswer::Ignored(format!(
                "repository {repository:?} is not the configured {:?}",
                hook.repository
            )));
        }
        let app = self
            .store
            .app_by_id(hook.app_id)
            .await?
            .filter(|a| !a.deleting)
            .ok_or_else(|| ServiceError::NotFound("the webhook's app is being deleted".into()))?;
        let settings = self.store.build_settings(app.id).await?;
        let wanted = format!("refs/heads/{}", settings.deploy_branch);
        if payload.git_ref != wanted {
            return Ok(WebhookAnswer::Ignored(format!(
                "{} is not the deploy branch {}",
                payload.git_ref.chars().take(200).collect::<String>(),
                settings.deploy_branch
            )));
        }
        if payload.deleted || payload.after.bytes().all(|b| b == b'0') {
            return Ok(WebhookAnswer::Ignored("the branch was deleted".into()));
        }
        let commit = payload.after.to_ascii_lowercase();
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("after", "the pushed commit is not a 40-digit hex id"));
        }
        // The delivery id is not signed: a replay may carry a fresh one. So a commit is built
        // once per app by webhooks, whatever the delivery says.
        let Some(delivery) = delivery else {
            return Err(invalid("delivery", "the delivery has no id header; Berth acts on identified deliveries only"));
        };
        if self.store.delivery_seen(&hook.id, delivery).await? {
            return Ok(WebhookAnswer::Ignored(format!("delivery {delivery} was accepted before (a redelivery)")));
        }
        if self.store.webhook_built(app.id, &commit).await? {
            return Ok(WebhookAnswer::Ignored(format!("commit {commit} was built for an earlier delivery")));
        }
        let Some(url) = settings.git_url.clone() else {
            return Err(invalid("git_url", format!("{} has no git URL to fetch the commit from", app.name)));
        };
        self.check_build_quota(&app).await?;
        let order = BuildOrder {
            app: app.clone(),
            commit: commit.clone(),
            git_ref: wanted,
            pusher: format!("webhook:{}", hook.provider().as_str()),
            trigger: "webhook",
            context: Context::Fetch { url, branch: settings.deploy_branch.clone() },
            no_cache: false,
            replace: false,
        };
        match self.builds().await?.start_build(order).await {
            Ok(started) => Ok(WebhookAnswer::Accepted(WebhookAccepted { build: started.row.number as u32, commit })),
            Err(StartError::Busy(running)) => Err(ServiceError::Conflict(format!(
                "build {} of {} is running; the provider may redeliver later",
                running.number, app.name
            ))),
            Err(StartError::Failed(error)) => Err(ServiceError::Internal(error)),
        }
    }
}

fn webhook_info(row: &WebhookRow) -> WebhookInfo {
    WebhookInfo {
        id: row.id.clone(),
        provider: row.provider(),
        repository: row.repository.clone(),
        path: format!("/hooks/{}/{}", row.provider().as_str(), row.id),
        secret: None,
        created_at: row.created_at,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    impl Headers for HashMap<&'static str, String> {
        fn get(&self, name: &str) -> Option<&str> {
            HashMap::get(self, name).map(String::as_str)
        }
    }

    #[test]
    fn signatures_are_checked_per_provider() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = hmac_hex("s3cret", body);
        // GitHub's published test vector for its documentation secret and payload.
        assert_eq!(
            hmac_hex("It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let github = HashMap::from([("x-hub-signature-256", format!("sha256={good}"))]);
        assert!(verify(WebhookProvider::Github, "s3cret", &github, body));
        assert!(!verify(WebhookProvider::Github, "other", &github, body), "wrong secret");
        assert!(!verify(WebhookProvider::Github, "s3cret", &github, b"{}"), "tampered body");
        let unprefixed = HashMap::from([("x-hub-signature-256", good.clone())]);
        assert!(!verify(WebhookProvider::Github, "s3cret", &unprefixed, body), "missing prefix");
        assert!(!verify(WebhookProvider::Github, "s3cret", &HashMap::new(), body), "no signature");
        let gitea = HashMap::from([("x-gitea-signature", good.clone())]);
        assert!(verify(WebhookProvider::Gitea, "s3cret", &gitea, body));
        let forgejo = HashMap::from([("x-forgejo-signature", good)]);
        assert!(verify(WebhookProvider::Gitea, "s3cret", &forgejo, body));
        let gitlab = HashMap::from([("x-gitlab-token", "s3cret".to_string())]);
        assert!(verify(WebhookProvider::Gitlab, "s3cret", &gitlab, body));
        assert!(!verify(WebhookProvider::Gitlab, "s3cre", &gitlab, body));
    }
}
