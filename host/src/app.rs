//! Wiring: from a config to a ready [`Host`], shared by `legsync run`, the
//! demo and the tests so they all start the host the same way.

use crate::cdr::CdrWriter;
use crate::config::HostConfig;
use crate::engine::LinkOptions;
use crate::events::Events;
use crate::policy::{CompileCache, Decider, PolicyHandle, PolicyRuntime, loader};
use crate::supervisor::{Host, HostOptions};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// The default compile-cache directory: `$XDG_CACHE_HOME/legsync` or
/// `$HOME/.cache/legsync`; none when neither is set.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .map(|base| base.join("legsync"))
}

/// The engine link's TLS from `[tls]`, or none (a warning: anyone who
/// reaches the engine port could take the controller slot).
fn link_tls(
    config: &HostConfig,
    engine: &str,
) -> anyhow::Result<Option<crate::engine::connection::LinkTls>> {
    let Some(tls) = &config.tls else {
        if crate::config::is_loopback(engine) {
            tracing::info!(engine, "the engine link is plain TCP (loopback)");
        } else {
            tracing::warn!(
                engine,
                "the engine link is plain TCP (link.allow_plain): configure [tls] so that only your engine and your hosts can talk on it"
            );
        }
        return Ok(None);
    };
    engine_tls(tls, engine).map(Some)
}

/// The engine link's TLS from a `[tls]` section, for the engine at
/// `engine` (also what `legsync check` loads).
pub fn engine_tls(
    tls: &crate::config::TlsConfig,
    engine: &str,
) -> anyhow::Result<crate::engine::connection::LinkTls> {
    let files = crate::tls::TlsFiles {
        ca: tls.ca.clone(),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    };
    let config = crate::tls::client_config(&files).context("cannot set up [tls]")?;
    let expiry = crate::tls::expiry(&files).context("cannot set up [tls]")?;
    crate::metrics::certificate_expiry("host", expiry.cert);
    crate::metrics::certificate_expiry("ca", expiry.ca);
    let name = tls.server_name_for(engine);
    let server_name = rustls_pki_types::ServerName::try_from(name.clone())
        .with_context(|| format!("[tls] server_name `{name}` is not a host name or address"))?;
    Ok(crate::engine::connection::LinkTls {
        config,
        server_name,
    })
}

/// The policy runtime with the config's compile cache.
pub fn policy_runtime(config: &HostConfig) -> anyhow::Result<PolicyRuntime> {
    let cache = config
        .policy
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .map(|dir| CompileCache::new(dir).with_max_mb(config.policy.cache_max_mb));
    PolicyRuntime::new(cache).context("cannot start the WebAssembly runtime")
}

/// Builds the policy runtime and loads the plugin set named by the config.
pub fn load_policy(config: &HostConfig) -> anyhow::Result<(PolicyRuntime, Decider)> {
    let runtime = policy_runtime(config)?;
    let decider = match &config.policy.plugin_dir {
        Some(dir) => Decider::Chain(Arc::new(
            loader::load_dir(&runtime, dir, &config.policy)
                .with_context(|| format!("cannot load the plugins in {}", dir.display()))?,
        )),
        None => {
            tracing::warn!("no plugin directory configured: every unknown leg will be rebuilt");
            Decider::Chain(Arc::new(crate::policy::PolicyChain::new(
                Vec::new(),
                config.policy.batch_size,
            )))
        }
    };
    Ok((runtime, decider))
}

/// The shadow plugin set of `policy.shadow_dir`, started, if one is
/// configured.
pub fn load_shadow(
    config: &HostConfig,
    runtime: &PolicyRuntime,
) -> anyhow::Result<Option<crate::policy::shadow::Shadow>> {
    let Some(dir) = &config.policy.shadow_dir else {
        return Ok(None);
    };
    let chain = loader::load_dir(runtime, dir, &config.policy)
        .with_context(|| format!("cannot load the shadow plugins in {}", dir.display()))?;
    let shadow = crate::policy::shadow::Shadow::start(chain)
        .context("cannot start the shadow plugins' thread")?;
    tracing::info!(plugins = %shadow.plugins().join(", "), "shadow plugin set: compared with the live set, never enforced");
    Ok(Some(shadow))
}

/// A host ready to run, with its policy handle (for reloads) and events.
pub fn build_host(
    config: &HostConfig,
    decider: Decider,
    events: Events,
) -> anyhow::Result<(Host, PolicyHandle)> {
    // Metrics a scrape must see from the start, which the metrics module
    // cannot know by itself.
    crate::metrics::build_info(
        crate::policy::contract::CONTRACT_VERSION,
        crate::protocol::PROTOCOL_VERSION,
    );
    crate::metrics::zero_labelled(
        crate::metrics::DISCONNECTS,
        "reason",
        crate::engine::LinkError::REASONS,
    );
    let engine = config
        .engine
        .clone()
        .context("no engine address: pass --engine or set `engine` in the config")?;
    let link = &config.link;
    let tls = link_tls(config, &engine)?;
    let options = HostOptions {
        link: LinkOptions {
            engine,
            connect_timeout: Duration::from_millis(link.connect_timeout_ms),
            heartbeat: Duration::from_millis(link.heartbeat_ms),
            heartbeat_timeout: Duration::from_millis(link.heartbeat_timeout_ms),
            max_frame: link.max_frame_bytes,
            protocol: link.protocol,
            host_name: config.name.clone(),
            tls,
            heartbeat_gaps: Default::default(),
        },
        standby_retry: Duration::from_millis(link.standby_retry_ms),
        max_legs: link.max_legs as usize,
        max_links: link.max_links as usize,
        max_mixers: link.max_mixers as usize,
        max_joins: link.max_joins as usize,
        resync_budget: Duration::from_millis(link.resync_timeout_ms),
        decision_budget: Duration::from_millis(link.decision_budget_ms),
        grace: config.grace(),
        backoff_base: Duration::from_millis(link.backoff_base_ms),
        backoff_max: Duration::from_millis(link.backoff_max_ms),
    };
    let ledger = CdrWriter::open(&config.cdr)?;
    ledger.0.set_host(&config.name)?;
    let policy = PolicyHandle::new(decider.clone());
    let mut host = Host::new(options, policy.clone(), ledger, events);
    if config.recording.enabled {
        let dir = config.recordings_dir();
        let recorder = crate::recording::Recorder::start(
            &dir,
            config.recording.max_files,
            config.recording.max_mb.saturating_mul(1 << 20),
        )?;
        tracing::info!(dir = %dir.display(), "every resync is recorded (for legsync replay)");
        host.record_resyncs(recorder);
    }
    // The plugins' `held-legs` reads this host's table from now on.
    decider.serve_held_legs(host.held_legs());
    Ok((host, policy))
}
