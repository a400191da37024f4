//! `berth server`'s settings: flags and environment variables over a TOML file (`--config`) over
//! the defaults. Secrets belong in the file (mode 0600) or in files it names, not on the command
//! line, where `ps` shows them to every user of the machine.
//!
//! ```toml
//! listen = "0.0.0.0:7878"
//! base_domain = "apps.example.com"
//! deploy_timeout = "2m"          # durations: humantime ("90s", "1m 30s") or plain seconds
//!
//! [[sign_in]]
//! name = "corp"
//! issuer = "https://login.example.com"
//! client_id = "berth"
//! client_secret_file = "/run/secrets/berth-oidc"
//! auto_join = ["example.com:main:viewer"]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use berth_ingress::{IngressConfig, IpNet};
use berth_store::Database;

use super::{AcmeSettings, ServerConfig};
use crate::oidc::{AutoJoin, Provider, ProviderKind};

/// Every setting of `berth server`, each optional: what a source leaves out, a later one (or the
/// default) provides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub data_dir: Option<PathBuf>,
    /// The store: `sqlite:PATH` or `postgres://...` (default: `berth.db` in the data directory).
    #[serde(default, deserialize_with = "database")]
    pub database: Option<Database>,
    pub listen: Option<SocketAddr>,
    pub ingress_listen: Option<SocketAddr>,
    pub base_domain: Option<String>,
    pub host_name: Option<String>,
    pub advertise_addr: Option<IpAddr>,
    #[serde(default, deserialize_with = "duration")]
    pub deploy_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub stop_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat_timeout: Option<Duration>,
    pub local_agent: Option<bool>,
    /// The build cache is pruned down to this many bytes when a build leaves it larger.
    #[serde(default, deserialize_with = "bytes")]
    pub build_cache_max: Option<u64>,
    /// Limits of apps created without their own; 0: none.
    pub default_cpu_millis: Option<u32>,
    pub default_memory_mb: Option<u64>,
    pub public_url: Option<String>,
    pub dashboard_dir: Option<PathBuf>,
    /// The ingress's HTTPS listener.
    pub https_listen: Option<SocketAddr>,
    /// The operator's certificate (PEM chain) and key for the base domain, typically a wildcard.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Obtain certificates by ACME with this contact address.
    pub acme_email: Option<String>,
    pub acme_directory: Option<String>,
    /// A CA (PEM) to trust for the ACME server's HTTPS, for private or test CAs.
    pub acme_ca_file: Option<PathBuf>,
    /// A CA (PEM) to trust, besides the system's roots, for sign-in providers' HTTPS.
    pub sign_in_ca_file: Option<PathBuf>,
    /// Addresses or CIDR blocks of proxies in front of Berth, believed for the client address
    /// (ingress and API) and for `X-Forwarded-Proto`/`-Host` (ingress).
    #[serde(default, deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// Read PROXY protocol headers from trusted proxies on the ingress's listeners.
    pub proxy_protocol: Option<bool>,
    /// One log line per ingress request (target `berth::access`).
    pub access_log: Option<bool>,
    /// Staple OCSP responses from responders on private addresses too.
    pub ocsp_private_responders: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub ingress_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub ingress_body_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub ingress_send_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub upstream_connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub upstream_response_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bytes")]
    pub ingress_max_header_size: Option<u64>,
    #[serde(default, deserialize_with = "bytes")]
    pub ingress_max_body_size: Option<u64>,
    pub ingress_max_connections: Option<usize>,
    pub ingress_max_connections_per_ip: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub api_header_timeout: Option<Duration>,
    pub api_max_connections: Option<usize>,
    /// A second API listener speaking HTTPS, with its certificate chain and key (PEM).
    pub api_tls_listen: Option<SocketAddr>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    /// Sign-in providers, from flags or from the file's `[[sign_in]]` tables (a table's
    /// `client_secret_file` is read as the file is).
    #[serde(default, deserialize_with = "sign_in_tables")]
    pub sign_in: Vec<Provider>,
}

/// One `[[sign_in]]` table of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInTable {
    name: String,
    /// An OpenID Connect provider's issuer URL.
    issuer: Option<String>,
    /// GitHub (or GitHub Enterprise with the URLs below) instead of OpenID Connect.
    #[serde(default)]
    github: bool,
    auth_url: Option<String>,
    token_url: Option<String>,
    api_url: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    /// `DOMAIN:TEAM:ROLE` rules.
    #[serde(default)]
    auto_join: Vec<String>,
}

impl SignInTable {
    fn into_provider(self) -> anyhow::Result<Provider> {
        let name = self.name;
        let client_secret = match (self.client_secret, self.client_secret_file) {
            (Some(secret), None) => secret,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading the client secret of {name} from {}", path.display()))?
                .trim()
                .to_string(),
            _ => bail!("sign-in provider {name}: set exactly one of client_secret and client_secret_file"),
        };
        let kind = match (self.github, self.issuer) {
            (true, None) => ProviderKind::GitHub {
                auth_url: self.auth_url.unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
                token_url: self.token_url.unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
                api_url: self.api_url.unwrap_or_else(|| "https://api.github.com".into()),
            },
            // Kept as written: the discovery document and the tokens must name it exactly.
            (false, Some(issuer)) => ProviderKind::Oidc { issuer },
            _ => bail!("sign-in provider {name}: set either issuer (OpenID Connect) or github = true"),
        };
        let auto_join = self.auto_join.iter().map(|rule| AutoJoin::parse(rule)).collect::<anyhow::Result<_>>()?;
        Ok(Provider { name, kind, client_id: self.client_id, client_secret, auto_join })
    }
}

impl ServerSettings {
    /// Reads a TOML settings file; unknown keys are errors (a typo must not pass silently).
    pub fn from_file(path: &Path) -> anyhow::Result<ServerSettings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// These settings, with `under`'s where these have none. Sign-in providers add up.
    pub fn over(self, under: ServerSettings) -> ServerSettings {
        let mut sign_in = under.sign_in;
        sign_in.extend(self.sign_in);
        ServerSettings {
            data_dir: self.data_dir.or(under.data_dir),
            database: self.database.or(under.database),
            listen: self.listen.or(under.listen),
            ingress_listen: self.ingress_listen.or(under.ingress_listen),
            base_domain: self.base_domain.or(under.base_domain),
            host_name: self.host_name.or(under.host_name),
            advertise_addr: self.advertise_addr.or(under.advertise_addr),
            deploy_timeout: self.deploy_timeout.or(under.deploy_timeout),
            drain_timeout: self.drain_timeout.or(under.drain_timeout),
            stop_grace: self.stop_grace.or(under.stop_grace),
            heartbeat_timeout: self.heartbeat_timeout.or(under.heartbeat_timeout),
            local_agent: self.local_agent.or(under.local_agent),
            build_cache_max: self.build_cache_max.or(under.build_cache_max),
            default_cpu_millis: self.default_cpu_millis.or(under.default_cpu_millis),
            default_memory_mb: self.default_memory_mb.or(under.default_memory_mb),
            public_url: self.public_url.or(under.public_url),
            dashboard_dir: self.dashboard_dir.or(under.dashboard_dir),
            https_listen: self.https_listen.or(under.https_listen),
            tls_cert: self.tls_cert.or(under.tls_cert),
            tls_key: self.tls_key.or(under.tls_key),
            acme_email: self.acme_email.or(under.acme_email),
            acme_directory: self.acme_directory.or(under.acme_directory),
            acme_ca_file: self.acme_ca_file.or(under.acme_ca_file),
            sign_in_ca_file: self.sign_in_ca_file.or(under.sign_in_ca_file),
            trusted_proxies: if self.trusted_proxies.is_empty() { under.trusted_proxies } else { self.trusted_proxies },
            proxy_protocol: self.proxy_protocol.or(under.proxy_protocol),
            access_log: self.access_log.or(under.access_log),
            ocsp_private_responders: self.ocsp_private_responders.or(under.ocsp_private_responders),
            ingress_header_timeout: self.ingress_header_timeout.or(under.ingress_header_timeout),
            ingress_body_timeout: self.ingress_body_timeout.or(under.ingress_body_timeout),
            ingress_send_timeout: self.ingress_send_timeout.or(under.ingress_send_timeout),
            upstream_connect_timeout: self.upstream_connect_timeout.or(under.upstream_connect_timeout),
            upstream_response_timeout: self.upstream_response_timeout.or(under.upstream_response_timeout),
            ingress_max_header_size: self.ingress_max_header_size.or(under.ingress_max_header_size),
            ingress_max_body_size: self.ingress_max_body_size.or(under.ingress_max_body_size),
            ingress_max_connections: self.ingress_max_connections.or(under.ingress_max_connections),
            ingress_max_connections_per_ip: self
                .ingress_max_connections_per_ip
                .or(under.ingress_max_connections_per_ip),
            api_header_timeout: self.api_header_timeout.or(under.api_header_timeout),
            api_max_connections: self.api_max_connections.or(under.api_max_connections),
            api_tls_listen: self.api_tls_listen.or(under.api_tls_listen),
            api_tls_cert: self.api_tls_cert.or(under.api_tls_cert),
            api_tls_key: self.api_tls_key.or(under.api_tls_key),
            sign_in,
        }
    }

    /// The configuration to run with: defaults for what is unset, and checks that it can work.
    pub fn resolve(self) -> anyhow::Result<ServerConfig> {
        let mut names: Vec<&str> = self.sign_in.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("two sign-in providers are named {}", pair[0]);
        }
        let defaults = IngressConfig::default();
        let ingress = IngressConfig {
            connect_timeout: self.upstream_connect_timeout.unwrap_or(defaults.connect_timeout),
            response_header_timeout: self.upstream_response_timeout.unwrap_or(defaults.response_header_timeout),
            trusted_proxies: self.trusted_proxies.clone(),
            proxy_protocol: self.proxy_protocol.unwrap_or(false),
            ocsp_private_responders: self.ocsp_private_responders.unwrap_or(false),
            header_read_timeout: self.ingress_header_timeout.unwrap_or(defaults.header_read_timeout),
            max_header_bytes: match self.ingress_max_header_size {
                Some(size) if !(1024..=1 << 20).contains(&size) => {
                    bail!("ingress_max_header_size must be between 1K and 1M")
                }
                Some(size) => size as usize,
                None => defaults.max_header_bytes,
            },
            body_idle_timeout: self.ingress_body_timeout.unwrap_or(defaults.body_idle_timeout),
            idle_timeout: self.ingress_send_timeout.unwrap_or(defaults.idle_timeout),
            max_body_bytes: self.ingress_max_body_size.unwrap_or(defaults.max_body_bytes),
            max_connections: self.ingress_max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: self.ingress_max_connections_per_ip.unwrap_or(defaults.max_connections_per_ip),
            access_log: self.access_log.unwrap_or(false),
            https_port: self.https_listen.map(|a| a.port()),
            ..defaults
        };
        let api_defaults = super::ApiLimits::default();
        let api = super::ApiLimits {
            header_read_timeout: self.api_header_timeout.unwrap_or(api_defaults.header_read_timeout),
            max_connections: self.api_max_connections.unwrap_or(api_defaults.max_connections),
            trusted_proxies: self.trusted_proxies,
            ..api_defaults
        };
        let tls_cert = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let api_tls = match (self.api_tls_listen, self.api_tls_cert, self.api_tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(super::ApiTls { listen, cert, key }),
            (None, None, None) => None,
            _ => bail!("--api-tls-listen, --api-tls-cert and --api-tls-key go together"),
        };
        let acme = self.acme_email.map(|email| AcmeSettings {
            email,
            directory: self.acme_directory.unwrap_or_else(|| berth_control::certs::LETS_ENCRYPT.to_string()),
            ca_file: self.acme_ca_file,
        });
        let server_defaults = crate::services::ContainerDefaults::SERVER;
        let container_defaults = crate::services::ContainerDefaults {
            cpu_millis: match self.default_cpu_millis {
                Some(0) => None,
                Some(cpu) if !(10..=256_000).contains(&cpu) => bail!("default_cpu_millis must be 0 or 10-256000"),
                Some(cpu) => Some(cpu),
                None => server_defaults.cpu_millis,
            },
            memory_mb: match self.default_memory_mb {
                Some(0) => None,
                Some(memory) if !(6..=4_194_304).contains(&memory) => bail!("default_memory_mb must be 0 or 6-4194304"),
                Some(memory) => Some(memory),
                None => server_defaults.memory_mb,
            },
        };
        let data_dir: PathBuf = self.data_dir.unwrap_or_else(|| "./berth-data".into());
        let config = ServerConfig {
            container_defaults,
            sign_in_ca_file: self.sign_in_ca_file,
            database: self.database.unwrap_or_else(|| Database::in_data_dir(&data_dir)),
            data_dir,
            listen: self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7878))),
            ingress_listen: self.ingress_listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            base_domain: self.base_domain.unwrap_or_else(|| "localhost".into()),
            host_name: self.host_name.unwrap_or_else(|| "local".into()),
            advertise_addr: self.advertise_addr,
            deploy_timeout: self.deploy_timeout.unwrap_or(Duration::from_secs(120)),
            drain_timeout: self.drain_timeout.unwrap_or(Duration::from_secs(30)),
            stop_grace_secs: whole_seconds("stop_grace", self.stop_grace.unwrap_or(Duration::from_secs(10)))?,
            heartbeat_timeout: self.heartbeat_timeout.unwrap_or(Duration::from_secs(3)).max(Duration::from_millis(500)),
            local_agent: self.local_agent.unwrap_or(true),
            build_cache_max: self.build_cache_max.unwrap_or(10 << 30),
            public_url: self.public_url,
            dashboard_dir: self.dashboard_dir.unwrap_or_else(super::default_dashboard_dir),
            sign_in: self.sign_in,
            https_listen: self.https_listen,
            tls_cert,
            acme,
            ingress,
            api,
            api_tls,
        };
        super::check(&config)?;
        Ok(config)
    }
}

/// Docker counts stop timeouts in whole seconds: `0.5` would silently become an immediate kill.
fn whole_seconds(setting: &str, duration: Duration) -> anyhow::Result<u32> {
    if duration.subsec_nanos() != 0 {
        bail!("{setting} is counted in whole seconds; {duration:?} is not");
    }
    Ok(duration.as_secs().try_into().unwrap_or(u32::MAX))
}

/// Longest duration any setting takes: a typo like `1000h` is an error, not a hang.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration as users write it: plain seconds (`90`, `0.5`) or humantime (`90s`, `1m 30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(seconds) => from_seconds(seconds),
        Err(_) => bounded(humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))?),
    }
}

/// `seconds` as a duration: finite, non-negative, at most [`MAX_DURATION`].
fn from_seconds(seconds: f64) -> Result<Duration, String> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{seconds} is not a duration (a non-negative number of seconds)"));
    }
    bounded(Duration::from_secs_f64(seconds.min(1e9)))
}

fn bounded(duration: Duration) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        return Err(format!("{duration:?} is longer than the longest allowed duration (7 days)"));
    }
    Ok(duration)
}

fn sign_in_tables<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Provider>, D::Error> {
    let tables = Vec::<SignInTable>::deserialize(deserializer)?;
    tables.into_iter().map(|t| t.into_provider().map_err(|e| serde::de::Error::custom(format!("{e:#}")))).collect()
}

fn cidrs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts.iter().map(|t| berth_ingress::parse_cidr(t).map_err(serde::de::Error::custom)).collect()
}

/// A `database` URL, parsed as `--database` is.
fn database<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Database>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|text| text.parse().map_err(serde::de::Error::custom)).transpose()
}

fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(f64),
        Text(String),
    }
    let parsed = match Written::deserialize(deserializer)? {
        Written::Seconds(seconds) => from_seconds(seconds),
        Written::Text(text) => parse_duration(&text),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// A size in bytes: a number with an optional `K`, `M`, `G` or `T` suffix (powers of 1024, `B`
/// and `iB` allowed after them: `10G`, `512MiB`).
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 =
        number.parse().with_context(|| format!("{text:?} is not a size: give bytes, or a number with K, M, G or T"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("{text:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    number.checked_mul(1u64 << shift).with_context(|| format!("{text:?} is too large"))
}

fn bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(text)) => parse_bytes(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// A duration from a flag, a file or the environment is parsed or refused, never a
            /// panic, and never longer than the longest allowed.
            #[test]
            fn any_text_is_a_bounded_duration_or_an_error(text in ".{0,40}") {
                if let Ok(duration) = parse_duration(&text) {
                    prop_assert!(duration <= MAX_DURATION);
                }
            }

            #[test]
            fn numbers_are_seconds(seconds in 0u64..=7 * 24 * 3600, millis in 0u64..1000) {
                let text = format!("{seconds}.{millis:03}");
                let parsed = parse_duration(&text).expect("a duration in range");
                prop_assert_eq!(parsed, Duration::from_millis(seconds * 1000 + millis).min(MAX_DURATION));
            }

            #[test]
            fn floats_of_any_kind_never_panic(seconds in any::<f64>()) {
                let _ = parse_duration(&seconds.to_string());
            }
        }
    }

    #[test]
    fn durations_are_seconds_or_humantime_and_bounded() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["inf", "NaN", "-1", "soon", "30d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_file_sets_what_flags_leave_out_and_secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let file = dir.path().join("berth.toml");
        let toml = format!(
            "base_domain = \"apps.example.com\"\ndeploy_timeout = \"3m\"\ndrain_timeout = 5\n\
             [[sign_in]]\nname = \"corp\"\nissuer = \"https://login.example.com/\"\nclient_id = \"berth\"\n\
             client_secret_file = \"{}\"\nauto_join = [\"example.com:main:viewer\"]\n",
            dir.path().join("secret").display()
        );
        std::fs::write(&file, toml).unwrap();
        let flags = ServerSettings { base_domain: Some("flag.example.com".into()), ..Default::default() };
        let config = flags.over(ServerSettings::from_file(&file).unwrap()).resolve().unwrap();
        assert_eq!(config.base_domain, "flag.example.com", "flags win over the file");
        assert_eq!(config.deploy_timeout, Duration::from_secs(180), "the file wins over the default");
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.sign_in.len(), 1);
        assert_eq!(config.sign_in[0].client_secret, "s3cret");
        assert!(
            matches!(&config.sign_in[0].kind, ProviderKind::Oidc { issuer } if issuer == "https://login.example.com/")
        );
    }

    #[test]
    fn typos_and_half_configured_providers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "base_domian = \"x\"\n").unwrap();
        let error = format!("{:#}", ServerSettings::from_file(&file).unwrap_err());
        assert!(error.contains("base_domian"), "{error}");
        std::fs::write(&file, "[[sign_in]]\nname = \"corp\"\nissuer = \"https://x\"\nclient_id = \"c\"\n").unwrap();
        let error = format!("{:#}", ServerSettings::from_file(&file).unwrap_err());
        assert!(error.contains("client_secret"), "{error}");
        std::fs::write(&file, "deploy_timeout = \"forever\"\n").unwrap();
        assert!(ServerSettings::from_file(&file).is_err());
        let half_a_second = ServerSettings { stop_grace: Some(Duration::from_millis(500)), ..Default::default() };
        let error = format!("{:#}", half_a_second.resolve().unwrap_err());
        assert!(error.contains("whole seconds"), "{error}");
    }

    #[test]
    fn the_store_defaults_to_sqlite_in_the_data_dir_and_a_file_may_put_it_on_postgresql() {
        let config = ServerSettings { data_dir: Some("/srv/berth".into()), ..Default::default() }.resolve().unwrap();
        assert_eq!(config.database, Database::Sqlite("/srv/berth/berth.db".into()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "database = \"postgres://berth:pw@db/berth\"\n").unwrap();
        let config = ServerSettings::from_file(&file).unwrap().resolve().unwrap();
        assert_eq!(config.database, Database::Postgres("postgres://berth:pw@db/berth".into()));
        std::fs::write(&file, "database = \"mysql://root:hunter2@db/berth\"\n").unwrap();
        let error = format!("{:#}", ServerSettings::from_file(&file).unwrap_err());
        // (TOML's own report quotes the line of the file; Berth's words redact the password.)
        assert!(error.contains("postgres://") && error.contains("root:***@db"), "{error}");
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("10G").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("10X").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999T").is_err(), "overflow is refused");
    }
}
