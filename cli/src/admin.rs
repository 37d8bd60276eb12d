//! `legsync status`, `legsync reload`, `legsync legs`: a running host's
//! state and controls, through its admin endpoint.

use anyhow::Context;
use clap::Args;
use hyper::{Method, StatusCode};
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync::admin::{DEFAULT_ADDR, StatusReport};
use legsync::config::HostConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The config the packaged unit runs with: read for its `admin` address
/// when neither `--admin` nor `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/legsync/legsync.toml";

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The host's admin endpoint. Default: the `admin` of its config
    /// (`--config`, or /etc/legsync/legsync.toml if it exists), else
    /// 127.0.0.1:9464.
    #[arg(long)]
    admin: Option<String>,
    /// The host's config file: its `admin` address and `admin_token` file
    /// are the ones used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The file holding the host's admin token (default: the config's
    /// `admin_token`, else `admin.token` beside its ledger).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the endpoint's JSON as it is.
    #[arg(long)]
    json: bool,
}

impl AdminArgs {
    /// The host's config: `--config`, the packaged one if present, else
    /// the defaults `legsync run` starts with.
    fn host_config(&self) -> anyhow::Result<(HostConfig, Option<PathBuf>)> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok((HostConfig::default(), None)),
        };
        Ok((HostConfig::load(&path)?, Some(path)))
    }

    /// Sends `method path` to the host with its token; a refusal for want
    /// of the token says how to give it.
    async fn ask(&self, method: Method, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let (config, config_path) = self.host_config()?;
        let addr = match &self.admin {
            Some(admin) => admin.clone(),
            None => match &config_path {
                Some(file) => admin_of(&config, file)?,
                None => DEFAULT_ADDR.to_string(),
            },
        };
        let token_path = self
            .token_file
            .clone()
            .unwrap_or_else(|| config.admin_token_path());
        let token = AdminToken::read(&token_path);
        let (code, body) = request(&addr, method, path, token.as_ref().ok()).await?;
        if code == StatusCode::UNAUTHORIZED {
            match token {
                Err(e) => anyhow::bail!(
                    "the host at {addr} needs its admin token, and {e}; pass the host's --config, or --token-file"
                ),
                Ok(_) => anyhow::bail!(
                    "the host at {addr} refused the token in {}: it is another host's, or was replaced after the host started",
                    token_path.display()
                ),
            }
        }
        Ok((code, body))
    }
}

/// The address to reach the admin endpoint of the host run with `config`
/// (read from `file`).
fn admin_of(config: &HostConfig, file: &Path) -> anyhow::Result<String> {
    let addr = config.admin_addr()?.with_context(|| {
        format!(
            "the admin endpoint is off in {} (`admin = \"off\"`): this command needs it. \
             Send SIGHUP to reload or SIGUSR1 to reopen instead, or set `admin`",
            file.display()
        )
    })?;
    anyhow::ensure!(
        addr.port() != 0,
        "{} has `admin` on port 0 (a free port at each start): pass the port the host logged with --admin",
        file.display()
    );
    // A host listening on every address is reached on loopback.
    let ip = if addr.ip().is_unspecified() {
        match addr {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    Ok(std::net::SocketAddr::new(ip, addr.port()).to_string())
}

#[derive(Debug, Args)]
pub struct LegsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Only legs of this NAP.
    #[arg(long)]
    nap: Option<String>,
    /// Legs with ids above this one (the `next_after` of the previous page).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many legs (1 to 10,000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, Args)]
pub struct MixersArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Mixers with ids above this one (the `next_after` of the previous page).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many mixers (1 to 10,000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// `legsync status`: exit 0 when the host is ready (active and in sync),
/// 3 when it runs but is not (standby, resyncing, in grace...).
pub async fn status(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let (code, body) = args.ask(Method::GET, "/status").await?;
    anyhow::ensure!(code == StatusCode::OK, "the host answered {code}: {body}");
    if args.json {
        print!("{body}");
    } else {
        let s: StatusReport = serde_json::from_str(&body)?;
        println!("{} (legsync {}): {}", s.name, s.version, s.state);
        let epoch = s.epoch.map_or("-".to_string(), |e| e.to_string());
        println!("  role {}, link {}, epoch {epoch}", s.role, s.link);
        println!(
            "  {} legs, {} links, {} mixers ({} joined legs) held; {} resyncs; {} calls from the ledger not yet matched",
            s.legs, s.links, s.mixers, s.joins, s.resyncs, s.recovered
        );
        for plugin in &s.plugins {
            let text = |key: &str| plugin[key].as_str().unwrap_or("-").to_string();
            let short = |hash: String| hash.chars().take(12).collect::<String>();
            println!(
                "  plugin {} {} rules {} ({}, {} calls, {} failures{})",
                text("name"),
                short(text("hash")),
                short(text("rules_hash")),
                text("failure"),
                plugin["calls"],
                plugin["failures"],
                if plugin["quarantined"] == true {
                    ", quarantined"
                } else {
                    ""
                }
            );
        }
        for dataset in &s.datasets {
            println!(
                "  dataset {}@{} ({}, {} keys, {:.1} MB)",
                dataset.name,
                dataset.version,
                dataset.kind.as_str(),
                dataset.entries,
                dataset.bytes as f64 / 1e6
            );
        }
        if let Some(resync) = &s.last_resync {
            println!(
                "  last resync: {} ms, known {}, rebuilt {}, refused {}, absent {}",
                resync["millis"],
                resync["known"],
                resync["rebuilt"],
                resync["refused"],
                resync["absent"]
            );
        }
        if let Some(ship) = &s.ship {
            println!(
                "  shipping to {}: {}, shipped through record {} of {} ({} behind, {:.1} s){}",
                ship.stream,
                if ship.connected {
                    "connected"
                } else {
                    "not connected"
                },
                ship.shipped,
                ship.durable,
                ship.behind_records,
                ship.behind_seconds,
                ship.error
                    .as_deref()
                    .map_or(String::new(), |e| format!("; interrupted: {e}"))
            );
        }
        if let Some(reload) = &s.last_reload {
            println!(
                "  last reload: {} ({})",
                reload["outcome"].as_str().unwrap_or("-"),
                reload["trigger"].as_str().unwrap_or("-")
            );
        }
    }
    let ready =
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["state"] == "active");
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `legsync reload`: the plugin set is rebuilt now; exit 1 if rejected.
pub async fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.accept {
        Some(hash) => format!("/reload?accept={hash}"),
        None => "/reload".to_string(),
    };
    let (code, body) = args.admin.ask(Method::POST, &path).await?;
    let report: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| anyhow::anyhow!("the host answered {code}: {body}"))?;
    let held_back = report["outcome"] == "held-back";
    if args.admin.json {
        print!("{body}");
    } else {
        if let Some(radius) = report.get("blast_radius") {
            println!("blast radius: {}", blast_line(radius));
            print_groups(radius);
        }
        let error = report["error"].as_str().unwrap_or("-");
        if held_back {
            let hash = report["set_hash"].as_str().unwrap_or("-");
            println!("reload HELD BACK; the running set stays: {error}");
            println!("to apply this set anyway: legsync reload --accept {hash}");
        } else if report["error"].is_string() {
            println!("reload rejected; the running set stays: {error}");
        } else {
            println!("reload applied; plugins now:");
            for plugin in report["plugins"].as_array().into_iter().flatten() {
                println!("  {}", plugin.as_str().unwrap_or("-"));
            }
        }
    }
    Ok(if code == StatusCode::OK {
        ExitCode::SUCCESS
    } else if held_back {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    })
}

/// `legsync enforce [--confirm HASH]`: the working set's blast radius on
/// the calls held; confirmed by its hash, those calls refused.
pub async fn enforce(args: EnforceArgs) -> anyhow::Result<ExitCode> {
    let (method, path) = match &args.confirm {
        Some(hash) => (Method::POST, format!("/enforce?confirm={hash}")),
        None => (Method::GET, "/enforce".to_string()),
    };
    let (code, body) = args.admin.ask(method, &path).await?;
    let report: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| anyhow::anyhow!("the host answered {code}: {body}"))?;
    if args.admin.json {
        print!("{body}");
    } else if let Some(error) = report["error"].as_str() {
        println!("nothing enforced: {error}");
    } else {
        let radius = &report["blast_radius"];
        println!(
            "the working set {} {}",
            report["set_hash"].as_str().unwrap_or("-"),
            blast_line(radius).trim_start_matches("the new set ")
        );
        print_groups(radius);
        match report.get("enforced") {
            Some(done) => println!(
                "enforced: {} legs refused, ended and dropped ({} answered calls billed to now){}",
                done["ended_legs"],
                done["ended_answered"],
                match done["gone_meanwhile"].as_u64() {
                    Some(n) if n > 0 => format!("; {n} had ended meanwhile"),
                    _ => String::new(),
                }
            ),
            None => println!(
                "nothing changed; to refuse these calls now: legsync enforce --confirm {}",
                report["set_hash"].as_str().unwrap_or("-")
            ),
        }
    }
    Ok(if code == StatusCode::OK {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `legsync shadow`: the shadow set's verdicts against the live ones.
pub async fn shadow(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let (code, body) = args.ask(Method::GET, "/shadow").await?;
    let report: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| anyhow::anyhow!("the host answered {code}: {body}"))?;
    if code != StatusCode::OK {
        anyhow::bail!(
            "{}",
            report["error"]
                .as_str()
                .unwrap_or("the host has no shadow set")
        );
    }
    if args.json {
        print!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let plugins: Vec<&str> = report["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    println!("shadow set: {}", plugins.join(", "));
    println!(
        "compared {} legs, {} links and {} mixers; {} not compared (the shadow set was behind); {} shadow verdicts by a failure policy",
        report["compared_legs"],
        report["compared_links"],
        report["compared_mixers"],
        report["skipped"],
        report["shadow_failures"]
    );
    println!(
        "the shadow set would refuse {} the live set rebuilt, and rebuild {} it refused",
        report["shadow_refuses"], report["shadow_rebuilds"]
    );
    for difference in report["differences"].as_array().into_iter().flatten() {
        println!(
            "  {:>8} {} {} by {} on {}",
            difference["count"],
            difference["item"].as_str().unwrap_or("-"),
            difference["kind"].as_str().unwrap_or("-"),
            difference["plugin"].as_str().unwrap_or("-"),
            difference["nap"].as_str().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct EnforceArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Refuse the calls now, if the working set's hash is this one (the
    /// hash `legsync enforce` printed).
    #[arg(long, value_name = "SET_HASH")]
    confirm: Option<String>,
}

/// The refusal groups of a blast radius, one line each.
fn print_groups(radius: &serde_json::Value) {
    for group in radius["groups"].as_array().into_iter().flatten() {
        println!(
            "  {:>8} legs ({} answered) refused by {} on {}{}",
            group["legs"],
            group["answered"],
            group["plugin"].as_str().unwrap_or("-"),
            group["nap"].as_str().unwrap_or("-"),
            group["reason"]
                .as_str()
                .or(group["failure"].as_str())
                .map(|why| format!(" ({why})"))
                .unwrap_or_default()
        );
    }
}

/// A blast radius as one line: "would refuse R of H held legs (A
/// answered) and L of K links".
fn blast_line(radius: &serde_json::Value) -> String {
    format!(
        "the new set would refuse {} of {} held legs ({} answered) and {} of {} links",
        radius["refused_legs"],
        radius["held_legs"],
        radius["refused_answered"],
        radius["refused_links"],
        radius["held_links"]
    )
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Apply the set on disk even over the guard, if its hash is this one
    /// (the hash a held-back reload printed).
    #[arg(long, value_name = "SET_HASH")]
    accept: Option<String>,
}

/// `legsync reopen`: after a rotation, the host writes new files.
pub async fn reopen(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let (code, body) = args.ask(Method::POST, "/reopen").await?;
    anyhow::ensure!(code == StatusCode::OK, "the host answered {code}: {body}");
    println!("reopened: the ledger (checkpoint written beside it) and the event log");
    Ok(ExitCode::SUCCESS)
}

/// `legsync mixers`: a page of the conference mixers the host holds, each
/// with its legs.
pub async fn mixers(args: MixersArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/mixers?after={}&limit={}", args.after, args.limit);
    let Some(page) = page(&args.admin, &path).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    for mixer in page["mixers"].as_array().into_iter().flatten() {
        let joins: Vec<String> = mixer["joins"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|join| format!("{} ({})", join["leg"], join["role"].as_str().unwrap_or("-")))
            .collect();
        println!(
            "{:>10} {:<24} {} leg(s){}{}",
            mixer["id"],
            mixer["name"].as_str().unwrap_or("-"),
            joins.len(),
            if joins.is_empty() { "" } else { ": " },
            joins.join(", ")
        );
    }
    let shown = page["mixers"].as_array().map_or(0, Vec::len);
    println!("{shown} of {} mixers{}", page["held"], more_with(&page));
    Ok(ExitCode::SUCCESS)
}

/// A page of a paged route, for people; with `--json`, printed as it came
/// and none returned.
async fn page(admin: &AdminArgs, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let (code, body) = admin.ask(Method::GET, path).await?;
    anyhow::ensure!(code == StatusCode::OK, "the host answered {code}: {body}");
    if admin.json {
        print!("{body}");
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&body)?))
}

/// How to ask for the page after `page`, if there is one.
fn more_with(page: &serde_json::Value) -> String {
    page["next_after"]
        .as_u64()
        .map_or(String::new(), |next| format!("; more with --after {next}"))
}

/// `legsync legs`: a page of the legs the host holds.
pub async fn legs(args: LegsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/legs?after={}&limit={}", args.after, args.limit);
    if let Some(nap) = &args.nap {
        path.push_str("&nap=");
        for byte in nap.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                path.push(byte as char);
            } else {
                path.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let Some(page) = page(&args.admin, &path).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    for leg in page["legs"].as_array().into_iter().flatten() {
        let text = |key: &str| leg[key].as_str().unwrap_or("-").to_string();
        println!(
            "{:>10} {:<11} {:<16} {} -> {}  adopted by {}",
            leg["id"],
            text("state"),
            text("nap"),
            text("calling"),
            text("called"),
            text("adopted_by")
        );
    }
    let shown = page["legs"].as_array().map_or(0, Vec::len);
    print!("{shown} of {} legs", page["matched"]);
    if args.nap.is_some() {
        print!(" of this NAP ({} held)", page["held"]);
    }
    println!("{}", more_with(&page));
    Ok(ExitCode::SUCCESS)
}
