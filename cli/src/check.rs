//! `legsync check [--config FILE]`: everything `legsync run` would load at
//! start (the config, every plugin with its rules), loaded the same way,
//! every problem named. The command to run before a restart or a reload.

use clap::Args;
use legsync::config::HostConfig;
use legsync::policy::loader;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file `legsync run` would read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The plugin directory (overrides `policy.plugin_dir`, as for `run`).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<String> = Vec::new();
    let mut config = match &args.config {
        Some(path) => match HostConfig::load(path) {
            Ok(config) => {
                println!("ok   config {}", path.display());
                check_host(&config, &mut problems);
                config
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                // Go on with the defaults: the plugins can still be checked.
                HostConfig::default()
            }
        },
        None => HostConfig::default(),
    };
    if let Some(dir) = &args.plugin_dir {
        config.policy.plugin_dir = Some(dir.clone());
    }
    match &config.policy.plugin_dir {
        None => println!("--   no plugin directory: every unknown leg would be rebuilt"),
        Some(dir) => check_plugins(&config, dir, &mut problems),
    }
    if problems.is_empty() {
        println!("everything loads: `legsync run` would start with this");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("FAIL {}", problem.replace('\n', " "));
    }
    println!(
        "{} problem(s): `legsync run` would not start, a reload would be rejected",
        problems.len()
    );
    Ok(ExitCode::FAILURE)
}

/// What `run` meets before the plugins: the ledger (and its sidecars, and
/// its host name), the engine link's TLS files, the admin address.
fn check_host(config: &HostConfig, problems: &mut Vec<String>) {
    match legsync::cdr::CdrWriter::verify(&config.cdr, &config.name) {
        Ok((open, last_record)) => {
            println!("ok   ledger {} ({open} calls open)", config.cdr.display());
            if config.ship.is_some() {
                // The shipping cursor, as `run` reads it at start.
                let cursor = legsync::ship::cursor::cursor_path(&config.cdr);
                match legsync::ship::cursor::read(&cursor, &config.name, last_record) {
                    Ok(shipped) => println!(
                        "ok   shipping cursor {} (shipped through record {} of {last_record})",
                        cursor.display(),
                        shipped.record
                    ),
                    Err(e) => problems.push(format!("{e:#}")),
                }
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    // As `run` loads it, for the engine the config names (without one,
    // `run` needs `--engine`, and the TLS is loaded then).
    if let (Some(tls), Some(engine)) = (&config.tls, &config.engine) {
        match legsync::app::engine_tls(tls, engine) {
            Ok(_) => println!("ok   tls {} {}", tls.cert.display(), tls.key.display()),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    for (key, addr) in [
        ("admin", config.admin_addr()),
        ("metrics", config.metrics_addr()),
    ] {
        match addr {
            Ok(Some(addr)) if addr.port() != 0 => match std::net::TcpListener::bind(addr) {
                Ok(_) => println!("ok   {key} {addr} is free"),
                // A running legsync holds it before a restart: that is fine.
                Err(_) if answers_as_legsync(addr) => {
                    println!("ok   {key} {addr} is held by the running legsync (a restart frees it)")
                }
                Err(e) => problems.push(format!(
                    "the {key} address {addr} cannot be bound ({e}): another program holds it; set `{key}` to a free address"
                )),
            },
            Ok(_) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if let Ok(Some(_)) = config.admin_addr() {
        check_token(&config.admin_token_path(), problems);
    }
}

/// The admin token `run` reads, or the directory it writes one into.
fn check_token(path: &std::path::Path, problems: &mut Vec<String>) {
    match legsync::admin::token::AdminToken::read(path) {
        Ok(_) => println!("ok   admin token {}", path.display()),
        Err(legsync::admin::token::TokenError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_none_or(|d| d.is_dir()) {
                println!(
                    "--   admin token {}: written at the first start",
                    path.display()
                );
            } else {
                problems.push(format!(
                    "the admin token {} cannot be written: its directory does not exist",
                    path.display()
                ));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
}

/// Whether a legsync admin endpoint answers at `addr`.
fn answers_as_legsync(addr: std::net::SocketAddr) -> bool {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            legsync::admin::client::request(&addr.to_string(), hyper::Method::GET, "/readyz", None),
        )
        .await
        .is_ok_and(|answer| {
            answer.is_ok_and(|(code, body)| code.is_success() && body.contains("\"role\""))
        })
    })
}

fn check_plugins(config: &HostConfig, dir: &std::path::Path, problems: &mut Vec<String>) {
    if let Err(e) = config.policy.validate() {
        problems.push(e);
        return;
    }
    let files = match loader::scan(dir) {
        Ok(files) => files,
        Err(e) => return problems.push(e.to_string()),
    };
    if files.is_empty() {
        println!(
            "--   {} holds no plugin: every unknown leg would be rebuilt",
            dir.display()
        );
    }
    for configured in config.policy.plugins.keys() {
        if !files.iter().any(|f| &f.name == configured) {
            println!(
                "warn the config has settings for `{configured}`, which is not in {}",
                dir.display()
            );
        }
    }
    let runtime = match legsync::app::policy_runtime(config) {
        Ok(runtime) => runtime,
        Err(e) => return problems.push(format!("{e:#}")),
    };
    for file in &files {
        match loader::load_plugin(
            &runtime,
            file,
            &config.policy,
            &config.policy.dataset_dir(dir),
        ) {
            Ok(plugin) => {
                let rules = match (&file.rules, plugin.rules_hash()) {
                    (Some(path), Some(hash)) => {
                        format!(" with {} (rules@{})", path.display(), &hash[..12])
                    }
                    _ => String::new(),
                };
                println!(
                    "ok   plugin {}@{}{rules}",
                    plugin.name(),
                    &plugin.hash()[..12]
                );
            }
            Err(e) => problems.push(format!("plugin {}: {e}", file.name)),
        }
    }
}
