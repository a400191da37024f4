//! The edge, per app: custom domains (a name belongs to one app instance-wide), certificates
//! (uploaded, or obtained by ACME), redirect and HSTS settings; and the ingress's figures.

use berth_control::certs::CertsError;
use berth_wire::edge::{AddDomain, CertificateInfo, DomainInfo, EdgeSettings, UploadCertificate};

use super::{Result, ServiceError, Services, invalid};
use crate::auth::{Action, Principal};

impl From<CertsError> for ServiceError {
    fn from(error: CertsError) -> Self {
        match error {
            CertsError::Invalid(message) => invalid("certificate", message),
            CertsError::NotFound(id) => ServiceError::NotFound(format!("certificate {id} not found")),
            CertsError::Internal(error) => ServiceError::Internal(error),
        }
    }
}

/// A custom domain as users may add it: a DNS name of two labels or more, in lower case, not
/// an IP address, and not under the base domain (those names are the apps').
pub(crate) fn validate_domain(name: &str, base_domain: &str) -> Result<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Err(invalid("name", format!("{name:?} is not a domain you can add: {why}")));
    if name.is_empty() || name.len() > 253 {
        return bad("a domain name has 1 to 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return bad("give a fully qualified name such as www.example.com");
    }
    if !labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }) {
        return bad(
            "each label is 1 to 63 letters, digits or inner hyphens (write internationalised names in punycode)",
        );
    }
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return bad("IP addresses are not domains");
    }
    if name == base_domain || name.ends_with(&format!(".{base_domain}")) {
        return bad(&format!("names under {base_domain} belong to the apps of this instance"));
    }
    Ok(name)
}

impl Services {
    /// The app's names (its own under the base domain first) with their certificates' state.
    pub async fn list_domains(&self, principal: &Principal, team: &str, app: &str) -> Result<Vec<DomainInfo>> {
        let row = self.find_app(principal, team, app, Action::ViewApps).await?;
        let domains = self.store.domains(row.id).await?;
        Ok(self.duties().await?.certs.status(row.id, &self.cluster.app_host(&row.name), &domains).await?)
    }

    pub async fn add_domain(
        &self,
        principal: &Principal,
        team: &str,
        app: &str,
        input: AddDomain,
    ) -> Result<DomainInfo> {
        let result = self.add_domain_inner(principal, team, app, &input).await;
        self.audit(Some(principal), "domain_add", Some(team), Some(app), Some(&input.name), &result).await?;
        result
    }

    async fn add_domain_inner(
        &self,
        principal: &Principal,
        team: &str,
        app: &str,
        input: &AddDomain,
    ) -> Result<DomainInfo> {
        let row = self.find_app(principal, team, app, Action::DeployApps).await?;
        let name = validate_domain(&input.name, self.cluster.base_domain())?;
        // Its certificate's state comes from the leader: on a follower, refuse before writing.
        let duties = self.duties().await?;
        match self.store.add_domain(row.id, &name).await {
            Ok(()) => {}
            // Whose it is stays unsaid: it may be another team's.
            Err(error) if berth_store::is_unique_violation(&error) => {
                return Err(ServiceError::Conflict(format!("{name} is already served by an app of this instance")));
            }
            Err(error) => return Err(error.into()),
        }
        self.cluster.publish_routes().await?;
        self.cluster.wake_certs().await?;
        let domains = self.store.domains(row.id).await?;
        let states = duties.certs.status(row.id, &self.cluster.app_host(&row.name), &domains).await?;
        states.into_iter().find(|d| d.name == name).ok_or_else(|| ServiceError::NotFound(name))
    }

    pub async fn remove_domain(&self, principal: &Principal, team: &str, app: &str, name: &str) -> Result<()> {
        let result = async {
            let row = self.find_app(principal, team, app, Action::DeployApps).await?;
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            if !self.store.remove_domain(row.id, &name).await? {
                return Err(ServiceError::NotFound(format!("{app} has no domain {name}")));
            }
            self.cluster.publish_routes().await?;
            self.cluster.wake_certs().await?;
            Ok(())
        }
        .await;
        self.audit(Some(principal), "domain_remove", Some(team), Some(app), Some(name), &result).await?;
        result
    }

    pub async fn list_certificates(
        &self,
        principal: &Principal,
        team: &str,
        app: &str,
    ) -> Result<Vec<CertificateInfo>> {
        let row = self.find_app(principal, team, app, Action::ViewApps).await?;
        Ok(self.duties().await?.certs.list(row.id).await?)
    }

    /// Stores the app's own certificate; every name in it must be one of the app's.
    pub async fn upload_certificate(
        &self,
        principal: &Principal,
        team: &str,
        app: &str,
        input: UploadCertificate,
    ) -> Result<CertificateInfo> {
        let result = async {
            let row = self.find_app(principal, team, app, Action::DeployApps).await?;
            let mut names = self.store.domains(row.id).await?;
            names.push(self.cluster.app_host(&row.name));
            Ok(self.duties().await?.certs.upload(row.id, &names, &input.chain_pem, &input.key_pem).await?)
        }
        .await;
        self.audit(Some(principal), "certificate_upload", Some(team), Some(app), None, &result).await?;
        result
    }

    pub async fn remove_certificate(&self, principal: &Principal, team: &str, app: &str, id: i64) -> Result<()> {
        let result = async {
            let row = self.find_app(principal, team, app, Action::DeployApps).await?;
            Ok(self.duties().await?.certs.remove(row.id, id).await?)
        }
        .await;
        self.audit(Some(principal), "certificate_remove", Some(team), Some(app), Some(&id.to_string()), &result)
            .await?;
        result
    }

    pub async fn edge_settings(&self, principal: &Principal, team: &str, app: &str) -> Result<EdgeSettings> {
        let row = self.find_app(principal, team, app, Action::ViewApps).await?;
        Ok(self.store.edge_settings(row.id).await?)
    }

    /// Changes the fields given; `hsts_max_age: 0` turns HSTS off.
    pub async fn update_edge_settings(
        &self,
        principal: &Principal,
        team: &str,
        app: &str,
        change: EdgeSettings,
    ) -> Result<EdgeSettings> {
        let result = async {
            let row = self.find_app(principal, team, app, Action::DeployApps).await?;
            if change.hsts_max_age.is_some_and(|age| age > 2 * 365 * 24 * 3600) {
                return Err(invalid("hsts_max_age", "at most two years (63072000 seconds)"));
            }
            let mut settings = self.store.edge_settings(row.id).await?;
            if change.https_redirect.is_some() {
                settings.https_redirect = change.https_redirect;
            }
            if let Some(age) = change.hsts_max_age {
                settings.hsts_max_age = (age > 0).then_some(age);
            }
            self.store.set_edge_settings(row.id, &settings).await?;
            self.cluster.publish_routes().await?;
            Ok(settings)
        }
        .await;
        self.audit(Some(principal), "edge_settings", Some(team), Some(app), None, &result).await?;
        result
    }

    /// The ingress's figures in the Prometheus text format (instance admins: they name every app).
    pub fn metrics(&self, principal: &Principal) -> Result<String> {
        principal.require_instance_admin()?;
        let mut text = self.cluster.ingress().prometheus();
        text.push_str(&format!(
            "# HELP berth_route_tables_computed_total Route tables the control plane computed (on releases, host changes, readiness changes).\n\
             # TYPE berth_route_tables_computed_total counter\n\
             berth_route_tables_computed_total {}\n",
            self.cluster.leader().map_or(0, |duties| duties.orchestrator.route_computations())
        ));
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_domains_are_dns_names_outside_the_base_domain() {
        assert_eq!(validate_domain(" WWW.Example.com. ", "apps.example.net").unwrap(), "www.example.com");
        assert_eq!(validate_domain("xn--bcher-kva.example", "localhost").unwrap(), "xn--bcher-kva.example");
        for bad in [
            "",
            "localhost",
            "web.localhost",
            "-a.example.com",
            "a-.example.com",
            "a..example.com",
            "*.example.com",
            "a_b.example.com",
            "10.0.0.1",
            "bücher.example",
            "example.com/path",
        ] {
            assert!(validate_domain(bad, "localhost").is_err(), "{bad:?} was accepted");
        }
    }
}
