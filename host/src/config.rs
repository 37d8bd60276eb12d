//! The host's config file (TOML). Every key is optional; command-line flags
//! override the file. Unknown keys are errors, so a typo never silently
//! falls back to a default.
//!
//! ```toml
//! engine = "127.0.0.1:7000"
//! grace_secs = 10
//! cdr = "/var/lib/legsync/cdr.jsonl"
//! events = "/var/log/legsync/events.jsonl"
//!
//! [link]
//! heartbeat_ms = 1000
//! heartbeat_timeout_ms = 3000
//!
//! [policy]
//! plugin_dir = "/etc/legsync/plugins.d"
//! ```

use crate::policy::PolicyConfig;
use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The engine's address: `host:port`, the host a name (resolved at
    /// every connection attempt) or an IP literal.
    #[serde(default)]
    pub engine: Option<String>,
    /// This host's name, unique among the hosts of a pair: the engine names
    /// its controller with it and every ledger record carries it (default:
    /// the machine's host name).
    #[serde(default = "default_name")]
    pub name: String,
    /// Grace time after a disconnection, in seconds (default 10).
    #[serde(default = "default_grace")]
    pub grace_secs: f64,
    /// The CDR file (default `cdr.jsonl` in the working directory).
    #[serde(default = "default_cdr")]
    pub cdr: PathBuf,
    /// The event log; none disables it.
    #[serde(default)]
    pub events: Option<PathBuf>,
    /// Stop the host (exit 1) rather than run on when the event log cannot
    /// be written (default false: failures are counted, logged, and shown
    /// by `/healthz`).
    #[serde(default)]
    pub events_required: bool,
    /// The admin endpoint's address (`/metrics`, `/healthz`, `/readyz`,
    /// `/status`, `/legs`, `POST /reload`), or `off`. Default
    /// 127.0.0.1:9464: loopback only unless configured otherwise.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// The file holding the admin endpoint's token, which its control
    /// routes require (see the admin endpoint's `token` module). Default: `admin.token`
    /// in the ledger's directory, written by the host at its first start.
    #[serde(default)]
    pub admin_token: Option<PathBuf>,
    /// A second listener that serves only `/metrics`, `/healthz` and
    /// `/readyz`, without a credential: for a scraper on another machine
    /// while `admin` stays on loopback. Default: none.
    #[serde(default)]
    pub metrics: Option<String>,
    #[serde(default)]
    pub link: LinkConfig,
    /// The engine link over TLS with mutual authentication; none: plain
    /// TCP (logged as a warning at start).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[recording]`: resyncs recorded for `legsync replay` (off by default).
    #[serde(default)]
    pub recording: crate::recording::RecordingConfig,
    /// `[ship]`: every durable ledger record published to a NATS JetStream
    /// stream (see `crate::ship`); none: the ledger stays on this host.
    #[serde(default)]
    pub ship: Option<crate::ship::config::ShipConfig>,
}

/// `[tls]`: the engine link's certificates (PEM files; see `crate::tls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA bundle the engine's certificate must chain to.
    pub ca: PathBuf,
    /// This host's certificate chain, shown to the engine.
    pub cert: PathBuf,
    /// This host's private key.
    pub key: PathBuf,
    /// The name the engine's certificate must carry (default: the host
    /// part of `engine`).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// The name to check the engine's certificate against.
    pub fn server_name_for(&self, engine: &str) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| engine_host(engine).to_string())
    }
}

/// The host part of an engine address (`host:port`; an IPv6 literal
/// without its brackets).
pub fn engine_host(engine: &str) -> &str {
    let host = engine.rsplit_once(':').map_or(engine, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `[link]`: the engine connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    pub connect_timeout_ms: u64,
    /// How often a heartbeat is sent.
    pub heartbeat_ms: u64,
    /// Silence after which the link is declared dead.
    pub heartbeat_timeout_ms: u64,
    /// First reconnect delay; doubles up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Largest frame accepted from the engine.
    pub max_frame_bytes: usize,
    /// A standby (the engine has another controller) asks for the slot
    /// this often: the takeover delay after the active host dies.
    pub standby_retry_ms: u64,
    /// The most legs a snapshot may carry (the table's bound).
    pub max_legs: u64,
    /// The most links a snapshot may carry.
    pub max_links: u64,
    /// The most mixers a snapshot may carry (protocol 4).
    pub max_mixers: u64,
    /// The most joins (a leg in a mixer) a snapshot may carry.
    pub max_joins: u64,
    /// The protocol version offered in the hello: 4 (mixers), or 3 for an
    /// engine that speaks 3 only (it closes on a version 4 hello).
    pub protocol: u8,
    /// The longest a resync may take (snapshot, decisions, drop
    /// acknowledgements) before the engine is cut off.
    pub resync_timeout_ms: u64,
    /// The plugin chain's time for decisions in one resync: past it, the
    /// remaining legs are decided by the plugins' failure policies (so a
    /// slow but legal plugin cannot hold a million-leg resync for minutes).
    pub decision_budget_ms: u64,
    /// Accept a plain TCP link to an engine on another machine. Off by
    /// default: without `[tls]`, any client that reaches the engine's port
    /// can take the controller slot, and this host then hands its calls
    /// over to it.
    pub allow_plain: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            connect_timeout_ms: 2_000,
            heartbeat_ms: 1_000,
            heartbeat_timeout_ms: 3_000,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME,
            standby_retry_ms: 100,
            max_legs: 4_000_000,
            max_links: 4_000_000,
            max_mixers: 1_000_000,
            max_joins: 4_000_000,
            protocol: crate::protocol::PROTOCOL_VERSION,
            resync_timeout_ms: 120_000,
            decision_budget_ms: DEFAULT_DECISION_BUDGET_MS,
            allow_plain: false,
        }
    }
}

/// The default `link.decision_budget_ms`.
pub const DEFAULT_DECISION_BUDGET_MS: u64 = 30_000;

fn default_grace() -> f64 {
    10.0
}

/// Whether an engine address names this machine (`localhost` or a
/// loopback IP).
pub fn is_loopback(engine: &str) -> bool {
    let host = engine_host(engine);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host:port`, with a port number: checked at load, resolved at connect.
pub fn check_engine_address(engine: &str) -> anyhow::Result<()> {
    let valid = match engine.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    anyhow::ensure!(
        valid,
        "engine must be host:port, such as 10.0.0.5:7000 or gw-3.example:7000 (it is `{engine}`)"
    );
    Ok(())
}

/// A TOML error on one line: where, and what (the parser's own text spans
/// several lines, with a drawing of the spot).
pub fn toml_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", error.message())
        }
        None => error.message().to_string(),
    }
}

/// The machine's host name, or `legsync` if it has none.
pub fn default_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "legsync".to_string(),
    }
}

/// The default admin address: loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

fn default_admin() -> String {
    DEFAULT_ADMIN_ADDR.to_string()
}

fn default_cdr() -> PathBuf {
    PathBuf::from("cdr.jsonl")
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            engine: None,
            name: default_name(),
            grace_secs: default_grace(),
            cdr: default_cdr(),
            events: None,
            events_required: false,
            admin: default_admin(),
            admin_token: None,
            metrics: None,
            link: LinkConfig::default(),
            tls: None,
            policy: PolicyConfig::default(),
            recording: Default::default(),
            ship: None,
        }
    }
}

impl HostConfig {
    /// Where resyncs are recorded: `recording.dir`, else `recordings/`
    /// beside the ledger.
    pub fn recordings_dir(&self) -> PathBuf {
        self.recording.dir.clone().unwrap_or_else(|| {
            self.cdr
                .parent()
                .map_or_else(|| PathBuf::from("recordings"), |dir| dir.join("recordings"))
        })
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: HostConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid config {}: {}",
                path.display(),
                toml_error(&text, &e)
            )
        })?;
        config
            .validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1.0..=86_400.0).contains(&self.grace_secs),
            "grace_secs must be between 1 and 86400 seconds (it is {}): a shorter grace ends every call at the first network blip",
            self.grace_secs
        );
        anyhow::ensure!(
            !self.name.is_empty()
                && self.name.len() <= 64
                && self.name.chars().all(|c| c.is_ascii_graphic()),
            "name must be 1 to 64 printable characters without spaces (it is `{}`)",
            self.name
        );
        self.admin_addr()?;
        self.metrics_addr()?;
        if let Some(ship) = &self.ship {
            ship.validate()?;
        }
        if let Some(engine) = &self.engine {
            check_engine_address(engine)?;
            anyhow::ensure!(
                self.tls.is_some() || self.link.allow_plain || is_loopback(engine),
                "engine `{engine}` is not on this machine and the link has no [tls]: any client that reaches \
                 its port could take the controller slot, and this host would hand its calls over to it. \
                 Configure [tls] (`legsync tls init` makes a trial PKI), or set `link.allow_plain = true` \
                 on a network only your engines and hosts can reach"
            );
        }
        let link = &self.link;
        for (key, value, range) in [
            (
                "link.connect_timeout_ms",
                link.connect_timeout_ms,
                1..=600_000,
            ),
            ("link.heartbeat_ms", link.heartbeat_ms, 10..=60_000),
            (
                "link.heartbeat_timeout_ms",
                link.heartbeat_timeout_ms,
                20..=600_000,
            ),
            ("link.backoff_base_ms", link.backoff_base_ms, 1..=600_000),
            ("link.backoff_max_ms", link.backoff_max_ms, 1..=3_600_000),
            (
                "link.max_frame_bytes",
                link.max_frame_bytes as u64,
                1024..=(64 << 20),
            ),
            ("link.standby_retry_ms", link.standby_retry_ms, 10..=60_000),
            ("link.max_legs", link.max_legs, 1..=100_000_000),
            ("link.max_links", link.max_links, 1..=100_000_000),
            ("link.max_mixers", link.max_mixers, 1..=100_000_000),
            ("link.max_joins", link.max_joins, 1..=100_000_000),
            (
                "link.protocol",
                u64::from(link.protocol),
                u64::from(crate::protocol::OLDEST_PROTOCOL_VERSION)
                    ..=u64::from(crate::protocol::PROTOCOL_VERSION),
            ),
            (
                "link.decision_budget_ms",
                link.decision_budget_ms,
                100..=3_600_000,
            ),
            (
                "link.resync_timeout_ms",
                link.resync_timeout_ms,
                100..=3_600_000,
            ),
        ] {
            anyhow::ensure!(
                range.contains(&value),
                "{key} must be between {} and {} (it is {value})",
                range.start(),
                range.end()
            );
        }
        anyhow::ensure!(
            link.heartbeat_timeout_ms > link.heartbeat_ms,
            "link.heartbeat_timeout_ms ({}) must exceed link.heartbeat_ms ({})",
            link.heartbeat_timeout_ms,
            link.heartbeat_ms
        );
        anyhow::ensure!(
            link.backoff_max_ms >= link.backoff_base_ms,
            "link.backoff_max_ms ({}) must be >= link.backoff_base_ms ({})",
            link.backoff_max_ms,
            link.backoff_base_ms
        );
        self.policy.validate().map_err(anyhow::Error::msg)
    }

    /// The admin endpoint's address; `None` when `admin = "off"`.
    pub fn admin_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.admin == "off" {
            return Ok(None);
        }
        self.admin.parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "admin must be an address such as 127.0.0.1:9464, or \"off\" (it is `{}`)",
                self.admin
            )
        })
    }

    /// The monitoring listener's address, if one is configured.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(metrics) = &self.metrics else {
            return Ok(None);
        };
        metrics.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("metrics must be an address such as 0.0.0.0:9465 (it is `{metrics}`)")
        })
    }

    /// The admin token's file: `admin_token`, or `admin.token` beside the
    /// ledger.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token.clone().unwrap_or_else(|| {
            let dir = self.cdr.parent().unwrap_or(Path::new(""));
            dir.join("admin.token")
        })
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config: HostConfig =
            toml::from_str("grace_secs = 2.5\n[link]\nheartbeat_ms = 200\n").unwrap();
        assert_eq!(config.grace(), Duration::from_millis(2500));
        assert_eq!(config.link.heartbeat_ms, 200);
        assert_eq!(config.link.heartbeat_timeout_ms, 3_000);
        config.validate().unwrap();
    }

    /// Whatever numbers a config file holds, loading it never panics, and
    /// what it accepts can be turned into the host's settings (durations,
    /// memory caps) without a panic either. Seeded, replayable.
    #[test]
    fn no_number_in_a_config_panics() {
        let keys = [
            ("", "grace_secs"),
            ("link", "connect_timeout_ms"),
            ("link", "heartbeat_ms"),
            ("link", "heartbeat_timeout_ms"),
            ("link", "backoff_base_ms"),
            ("link", "backoff_max_ms"),
            ("link", "max_frame_bytes"),
            ("link", "standby_retry_ms"),
            ("link", "max_legs"),
            ("link", "max_links"),
            ("link", "max_mixers"),
            ("link", "max_joins"),
            ("policy", "batch_size"),
            ("policy.defaults", "memory_mb"),
            ("policy.defaults", "deadline_ms"),
            ("policy.defaults", "quarantine_base_ms"),
            ("policy.defaults", "quarantine_after"),
            ("policy.defaults", "instances"),
        ];
        let specials = [
            "0",
            "1",
            "-1",
            "1e20",
            "1e19",
            "-0.0",
            "nan",
            "inf",
            "0.001",
            "4294967296",
            "17592186044416",
            "9223372036854775807",
            "18446744073709551615",
            "1.5",
        ];
        let mut state = 0x5eed_u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^ (z >> 31)
        };
        for _ in 0..5_000 {
            let (table, key) = keys[(next() % keys.len() as u64) as usize];
            let value = match next() % 3 {
                0 => specials[(next() % specials.len() as u64) as usize].to_string(),
                1 => (next() >> (next() % 64)).to_string(),
                _ => format!("{}", f64::from_bits(next())),
            };
            let text = if table.is_empty() {
                format!("{key} = {value}\n")
            } else {
                format!("[{table}]\n{key} = {value}\n")
            };
            let Ok(config) = toml::from_str::<HostConfig>(&text) else {
                continue;
            };
            if config.validate().is_ok() {
                let _ = config.grace();
                let settings = config.policy.settings_for("any");
                let _ = crate::policy::limits::deadline_ticks(settings.limits.call_deadline);
                assert!(settings.limits.memory_bytes > 0, "{text}");
            }
        }
    }

    #[test]
    fn a_toml_error_is_one_line_with_its_place() {
        let text = "grace_secs = 3\n[link]\nheartbeat = 5\n";
        let error = toml::from_str::<HostConfig>(text).unwrap_err();
        let line = toml_error(text, &error);
        assert!(
            line.starts_with("line 3, column 1: unknown field `heartbeat`"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn mistakes_are_named() {
        let err = toml::from_str::<HostConfig>("grace = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `grace`"), "{err}");
        let config: HostConfig = toml::from_str("[link]\nheartbeat_ms = 5000\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_timeout_ms")
        );
    }
}
