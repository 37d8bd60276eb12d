//! The host's metrics, through the `metrics` facade, rendered by the admin
//! endpoint in the Prometheus text format (`/metrics`).
//!
//! Every name is here, with its help text, so `docs/operations.md` and the
//! code cannot drift apart unnoticed (a test renders them all). Hot paths
//! count per batch, never per leg: a million-leg resync adds a few thousand
//! increments, not a million.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const LINK_STATE: &str = "legsync_link_state";
pub const ROLE: &str = "legsync_role";
pub const EPOCH: &str = "legsync_epoch";
pub const CONNECTS: &str = "legsync_connects_total";
pub const DISCONNECTS: &str = "legsync_disconnects_total";
pub const BUSY: &str = "legsync_standby_busy_total";
pub const RESYNCS: &str = "legsync_resyncs_total";
pub const RESYNC_SECONDS: &str = "legsync_resync_duration_seconds";
pub const LEGS: &str = "legsync_legs";
pub const LINKS: &str = "legsync_links";
pub const MIXERS: &str = "legsync_mixers";
pub const JOINS: &str = "legsync_mixer_joins";
pub const MIXER_DECISIONS: &str = "legsync_mixer_decisions_total";
pub const MIXERS_TERMINATED: &str = "legsync_mixers_terminated_total";
pub const RECOVERED: &str = "legsync_recovered_calls";
pub const UNKNOWN_LEG_EVENTS: &str = "legsync_unknown_leg_events_total";
pub const DECISIONS: &str = "legsync_sync_decisions_total";
pub const PLUGIN_FAILURES: &str = "legsync_plugin_failures_total";
pub const QUARANTINES: &str = "legsync_plugin_quarantines_total";
pub const PLUGIN_RECYCLES: &str = "legsync_plugin_recycles_total";
pub const PLUGIN_COUNTER: &str = "legsync_plugin_counter_total";
pub const PLUGIN_CALL_SECONDS: &str = "legsync_plugin_call_duration_seconds";
pub const RELOADS: &str = "legsync_reloads_total";
pub const RELOAD_BLAST_RADIUS: &str = "legsync_reload_blast_radius_legs";
pub const SHADOW_DIFFERENCES: &str = "legsync_shadow_differences_total";
pub const SHADOW_COMPARED: &str = "legsync_shadow_compared_total";
pub const SHADOW_SKIPPED: &str = "legsync_shadow_skipped_total";
pub const CDR_RECORDS: &str = "legsync_cdr_records_total";
pub const CDR_FSYNC_SECONDS: &str = "legsync_cdr_fsync_duration_seconds";
pub const GRACE_EXPIRIES: &str = "legsync_grace_expiries_total";
pub const HANDOVERS: &str = "legsync_handovers_total";
pub const EPOCH_REFUSALS: &str = "legsync_epoch_refusals_total";
pub const EVENT_LOG_ERRORS: &str = "legsync_event_log_errors_total";
pub const SNAPSHOT_ANOMALIES: &str = "legsync_snapshot_anomalies_total";
pub const HEARTBEAT_GAP_SECONDS: &str = "legsync_heartbeat_gap_seconds";
pub const TABLE_FULL: &str = "legsync_table_full_refusals_total";
pub const LIVE_DURABLE_SECONDS: &str = "legsync_live_batch_durable_seconds";
pub const BUILD_INFO: &str = "legsync_build_info";
pub const TLS_EXPIRY: &str = "legsync_tls_certificate_expiry_timestamp_seconds";
pub const SHIP_RECORDS: &str = "legsync_ship_records_total";
pub const SHIP_DUPLICATES: &str = "legsync_ship_duplicates_total";
pub const SHIP_FAILURES: &str = "legsync_ship_failures_total";
pub const SHIP_CONNECTED: &str = "legsync_ship_connected";
pub const SHIP_BEHIND_RECORDS: &str = "legsync_ship_behind_records";
pub const SHIP_BEHIND_SECONDS: &str = "legsync_ship_behind_seconds";
pub const SHIP_LAG_SECONDS: &str = "legsync_ship_lag_seconds";

/// Every metric: name, type, help (the list in docs/operations.md).
pub const ALL: &[(&str, &str, &str)] = &[
    (
        LINK_STATE,
        "gauge",
        "1 for the engine link's current state (label state: connecting, resyncing, connected, disconnected, purged), 0 for the others",
    ),
    (
        BUILD_INFO,
        "gauge",
        "1, labelled with the build: version, commit, contract (plugin WIT), protocol (engine wire)",
    ),
    (
        ROLE,
        "gauge",
        "1 for the host's current role in its pair (label role: connecting, active, standby), 0 for the others",
    ),
    (
        EPOCH,
        "gauge",
        "the controller epoch of the host's latest accepted connection",
    ),
    (
        CONNECTS,
        "counter",
        "connections the engine accepted (this host became its controller)",
    ),
    (
        DISCONNECTS,
        "counter",
        "engine links lost, by reason (closed, heartbeat, protocol, fenced, unexpected, other)",
    ),
    (
        BUSY,
        "counter",
        "Busy answers: the engine had another controller (a standby asking)",
    ),
    (RESYNCS, "counter", "completed resyncs"),
    (
        RESYNC_SECONDS,
        "histogram",
        "time from the engine's hello to the resync done",
    ),
    (LEGS, "gauge", "call legs held"),
    (LINKS, "gauge", "links held"),
    (MIXERS, "gauge", "conference mixers held (protocol 4)"),
    (JOINS, "gauge", "legs joined to the mixers held"),
    (
        MIXER_DECISIONS,
        "counter",
        "unknown mixers decided at resyncs, by decision (rebuild, refuse)",
    ),
    (
        MIXERS_TERMINATED,
        "counter",
        "mixers the host held that ended, by reason (released, absent-after-resync, grace-expired, replaced, host-shutdown, handed-over)",
    ),
    (
        RECOVERED,
        "gauge",
        "calls open in the ledger at start, not yet matched with the engine",
    ),
    (
        UNKNOWN_LEG_EVENTS,
        "counter",
        "live events about legs the host did not hold",
    ),
    (
        DECISIONS,
        "counter",
        "OnCallLegSync and OnLinkSync verdicts, by plugin, item (leg, link) and decision (rebuild, refuse)",
    ),
    (
        PLUGIN_FAILURES,
        "counter",
        "failed plugin calls, by plugin and kind (trap, deadline, memory-cap, malformed, instantiate, quarantined)",
    ),
    (
        QUARANTINES,
        "counter",
        "times a plugin was quarantined for failing repeatedly",
    ),
    (
        PLUGIN_RECYCLES,
        "counter",
        "plugin instances replaced by a fresh one after a call left them near their memory cap or used up `max_calls_per_instance`, by plugin",
    ),
    (
        PLUGIN_COUNTER,
        "counter",
        "a plugin's own counters (the contract's `count`), by plugin and counter name; at most 32 per plugin",
    ),
    (
        PLUGIN_CALL_SECONDS,
        "histogram",
        "duration of one plugin call (a batch), by plugin and export",
    ),
    (
        RELOADS,
        "counter",
        "plugin set reloads, by outcome (applied, held-back, rejected-will-retry, rejected)",
    ),
    (
        SHADOW_DIFFERENCES,
        "counter",
        "shadow verdicts that differ from the live ones, by kind (shadow-refuses, shadow-rebuilds), item, the plugin that refused, and NAP",
    ),
    (
        SHADOW_COMPARED,
        "counter",
        "legs and links the shadow plugin set decided and compared with the live verdicts",
    ),
    (
        SHADOW_SKIPPED,
        "counter",
        "legs and links the shadow set did not compare: it was behind (its queue of 64 batches full)",
    ),
    (
        RELOAD_BLAST_RADIUS,
        "gauge",
        "held legs the last reloaded set would refuse (its blast radius), applied or held back",
    ),
    (
        CDR_RECORDS,
        "counter",
        "ledger records written, by kind (start, end, resume, carry)",
    ),
    (
        CDR_FSYNC_SECONDS,
        "histogram",
        "duration of one ledger fsync (one per group of records)",
    ),
    (
        LIVE_DURABLE_SECONDS,
        "histogram",
        "time from reading a batch of live engine messages to its ledger records durable (the host acts on an answer or release only then)",
    ),
    (
        SHIP_RECORDS,
        "counter",
        "ledger records the fleet stream acknowledged (`[ship]`)",
    ),
    (
        SHIP_DUPLICATES,
        "counter",
        "records the stream acknowledged as duplicates (sent again after a restart or a lost acknowledgement, and dropped)",
    ),
    (
        SHIP_FAILURES,
        "counter",
        "shipping interruptions: NATS away, a publish not acknowledged in time, the stream missing, a ledger piece missing",
    ),
    (
        SHIP_CONNECTED,
        "gauge",
        "1 while the shipper is connected to NATS, 0 otherwise (only with `[ship]`)",
    ),
    (
        SHIP_BEHIND_RECORDS,
        "gauge",
        "durable ledger records the stream has not acknowledged yet",
    ),
    (
        SHIP_BEHIND_SECONDS,
        "gauge",
        "age of the oldest durable ledger record the stream has not acknowledged (0 when caught up)",
    ),
    (
        SHIP_LAG_SECONDS,
        "histogram",
        "time from a ledger record durable on this host to its acknowledgement by the stream",
    ),
    (
        TABLE_FULL,
        "counter",
        "new legs from live events refused because the table holds link.max_legs",
    ),
    (
        HEARTBEAT_GAP_SECONDS,
        "histogram",
        "time between two heartbeats the host sent (link.heartbeat_ms when healthy; the engine drops a controller silent for its heartbeat timeout)",
    ),
    (
        GRACE_EXPIRIES,
        "counter",
        "grace timer expiries (every context destroyed)",
    ),
    (
        HANDOVERS,
        "counter",
        "grace times that ended with another controller holding the engine: the calls were handed over to it (ENDs that its records supersede), not reported gone",
    ),
    (
        EPOCH_REFUSALS,
        "counter",
        "engine connections refused because the engine's controller epoch went back",
    ),
    (
        SNAPSHOT_ANOMALIES,
        "counter",
        "snapshot content ignored, by kind (duplicate-leg, self-link, leg-in-two-links, link-to-unlisted-leg)",
    ),
    (
        TLS_EXPIRY,
        "gauge",
        "when a certificate of the engine link stops being valid, in Unix seconds, by certificate (host: this host's own, ca: the earliest of its CA bundle, engine: the engine's, at the latest handshake)",
    ),
    (
        EVENT_LOG_ERRORS,
        "counter",
        "event-log writes that failed (each a line or a buffer of lines): the audit trail is incomplete",
    ),
];

/// Histogram buckets, in seconds: 100 us to ~100 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle) and describes every metric.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness's) keeps its place; our handle
        // then renders nothing, which only the admin endpoint would notice.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        for (name, kind, help) in ALL {
            match *kind {
                "counter" => describe_counter!(*name, *help),
                "gauge" => describe_gauge!(*name, *help),
                _ => describe_histogram!(*name, metrics::Unit::Seconds, *help),
            }
        }
        zero_counters();
        handle
    })
}

/// `legsync_build_info`: 1, labelled with the build and the versions of
/// the plugin contract and the engine protocol it speaks (given by the
/// host's wiring: this module depends on no other).
pub fn build_info(contract: &'static str, protocol: u8) {
    install();
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => crate::BUILD_COMMIT,
        "contract" => contract,
        "protocol" => protocol.to_string()
    )
    .set(1.0);
}

/// Shows `name` at 0 for each of `values` of its `label` (see
/// `zero_counters`), for label sets another module owns (the engine link's
/// disconnect reasons).
pub fn zero_labelled(name: &'static str, label: &'static str, values: &[&'static str]) {
    install();
    for &value in values {
        counter!(name, label => value).absolute(0);
    }
}

/// Every counter series whose labels are known before it first counts,
/// shown at 0 from the start: an alert on "any increase" (`increase(..) >
/// 0`) cannot see the first event of a series that did not exist before it.
/// Series labelled by plugin appear when their plugin first counts; the
/// disconnect reasons are shown by the host's wiring ([`zero_labelled`]).
fn zero_counters() {
    for name in [
        CONNECTS,
        BUSY,
        RESYNCS,
        UNKNOWN_LEG_EVENTS,
        GRACE_EXPIRIES,
        HANDOVERS,
        EPOCH_REFUSALS,
        EVENT_LOG_ERRORS,
        TABLE_FULL,
    ] {
        counter!(name).absolute(0);
    }
    for outcome in ["applied", "held-back", "rejected-will-retry", "rejected"] {
        counter!(RELOADS, "outcome" => outcome).absolute(0);
    }
    for kind in ["start", "end", "resume", "carry"] {
        counter!(CDR_RECORDS, "kind" => kind).absolute(0);
    }
}

/// Records when the `certificate` (`host`, `ca`, `engine`) expires.
pub fn certificate_expiry(certificate: &'static str, unix_seconds: i64) {
    // Set before the admin endpoint starts: the recorder must be there.
    install();
    gauge!(TLS_EXPIRY, "certificate" => certificate).set(unix_seconds as f64);
}

/// Sets a one-hot gauge: `value` 1, every other of `all` 0.
pub fn one_hot(name: &'static str, label: &'static str, value: &str, all: &[&'static str]) {
    for &each in all {
        gauge!(name, label => each).set(if each == value { 1.0 } else { 0.0 });
    }
}

/// Counts `n` under `name` with one label.
pub fn count(name: &'static str, label: &'static str, value: &'static str, n: u64) {
    if n > 0 {
        counter!(name, label => value).increment(n);
    }
}

/// Observes a duration in seconds.
pub fn observe(name: &'static str, elapsed: Duration) {
    histogram!(name).record(elapsed.as_secs_f64());
}
