//! The `legsync` binary: one subcommand per job, the product's (from the
//! `legsync` crate) and the lab's (`legsync-lab`: engine-sim, demo, bench).

mod admin;
mod cdr;
mod check;
mod docs;
mod init;
mod notify;
mod plugin;
mod plugin_test;
mod replay;
mod run;
mod sim;
mod tls;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// `legsync --version`: the release, the commit it was built from and its
/// date, and the plugin contract and wire protocol it speaks.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (commit {}, {}; plugin contract legsync:policy@{}, engine protocol {})",
            env!("CARGO_PKG_VERSION"),
            legsync::BUILD_COMMIT,
            legsync::BUILD_COMMIT_DATE,
            legsync::policy::contract::CONTRACT_VERSION,
            legsync::protocol::PROTOCOL_VERSION,
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "legsync",
    version = long_version(),
    about = "Call-leg resynchronization host with WebAssembly policy plugins"
)]
struct Cli {
    /// Log lines for people (`text`) or machines (`json`, one object per
    /// line). Colour only on a terminal, never with NO_COLOR set.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the host against an engine.
    Run(run::RunArgs),
    /// Run the engine simulator (a stand-in for the media gateway's engine).
    EngineSim(sim::SimArgs),
    /// Play the reference scenarios end to end against a real simulator.
    Demo(legsync_lab::demo::DemoArgs),
    /// Measure resync throughput against a preloaded engine-sim.
    Bench(legsync_lab::bench::BenchArgs),
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Decide a recorded resync again with a plugin set (`[recording]`), and
    /// show how its decisions differ from those made then, or from another
    /// set's (--against).
    Replay(replay::ReplayArgs),
    /// Billing from the ledger (the CDR file): bill and check.
    #[command(subcommand)]
    Cdr(cdr::CdrCommand),
    /// Load the config, every plugin and its rules as `run` would; name
    /// every problem (exit 1). Run it before a restart or a reload.
    Check(check::CheckArgs),
    /// Write a starter setup to DIR: a config, and a plugin directory with
    /// the `rules` plugin and starter rules.
    Init(init::InitArgs),
    /// Certificates for the engine link over TLS.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// A running host's state, from its admin endpoint (exit 3 when not ready).
    Status(admin::AdminArgs),
    /// Reload a running host's plugin set now, showing its blast radius
    /// (exit 1 if rejected, 2 if held back by the guard).
    Reload(admin::ReloadArgs),
    /// Apply the working plugin set to the calls a running host holds now:
    /// shows its blast radius; with --confirm HASH, refuses, ends (billed)
    /// and drops exactly those calls.
    Enforce(admin::EnforceArgs),
    /// How a running host's shadow plugin set decided against the live one:
    /// differences by kind, plugin and NAP.
    Shadow(admin::AdminArgs),
    /// The legs a running host holds, a page at a time.
    Legs(admin::LegsArgs),
    /// The conference mixers a running host holds, each with its legs.
    Mixers(admin::MixersArgs),
    /// After a rotation (logrotate postrotate): a running host writes its
    /// ledger and event log anew, the ledger's checkpoint first (SIGUSR1
    /// does the same).
    Reopen(admin::AdminArgs),
    /// Write the man pages (one per command) to DIR.
    Man(docs::ManArgs),
    /// Print the shell completions for SHELL (bash, zsh, fish...).
    Completions(docs::CompletionsArgs),
}

/// Parses the command line, runs the command, maps errors to exit codes.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Commands::Run(_) | Commands::EngineSim(_));
    if !daemon {
        // A tool whose reader went away (`legsync cdr bill ... | head`)
        // ends quietly, as Unix tools do. The daemons keep ignoring
        // SIGPIPE: a closed log pipe must not take calls down.
        // SAFETY: setting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging(
        matches!(cli.command, Commands::Demo(_) | Commands::Bench(_)),
        cli.log_format,
    );
    let result = match cli.command {
        Commands::Run(args) => block_on(run::run(args)),
        Commands::EngineSim(args) => block_on(sim::run(args)),
        Commands::Demo(args) => block_on(legsync_lab::demo::run(args)),
        Commands::Bench(args) => block_on(legsync_lab::bench::run(args)),
        Commands::Plugin(command) => plugin::run(command),
        Commands::Replay(args) => replay::run(args),
        Commands::Cdr(command) => cdr::run(command),
        Commands::Check(args) => check::run(args),
        Commands::Init(args) => init::run(args),
        Commands::Tls(command) => tls::run(command),
        Commands::Status(args) => block_on(admin::status(args)),
        Commands::Reload(args) => block_on(admin::reload(args)),
        Commands::Enforce(args) => block_on(admin::enforce(args)),
        Commands::Shadow(args) => block_on(admin::shadow(args)),
        Commands::Legs(args) => block_on(admin::legs(args)),
        Commands::Mixers(args) => block_on(admin::mixers(args)),
        Commands::Reopen(args) => block_on(admin::reopen(args)),
        Commands::Man(args) => docs::man(args),
        Commands::Completions(args) => docs::completions(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write;
            // One line, whatever the error's chain; never a panic on a
            // closed stderr.
            let text = format!("{e:#}").replace('\n', " ");
            let _ = writeln!(std::io::stderr(), "legsync: {text}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(
    future: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(future);
    // Everything the command owes is done when its future returns (records
    // durable, logs flushed); a blocking task still running (a plugin's
    // termination notice past its second) must not hold the exit.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long the exit waits for blocking tasks still running.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

fn init_logging(quiet: bool, format: LogFormat) {
    use std::io::IsTerminal;
    // The demo narrates on stdout; only errors go to the log unless RUST_LOG says otherwise.
    let default = if quiet { "error" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr loses log lines, never the process.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour)
            .fmt_fields(one_line_fields())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Text log fields as `DefaultFields` writes them (the message, then
/// `name=value`), with line breaks written as `\n`: one event, one line,
/// even when an error (a rules file's, a TOML parser's) spans several.
fn one_line_fields() -> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = text.replace("\r\n", "\\n").replace('\n', "\\n");
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// A token cancelled at Ctrl-C or SIGTERM. The handlers are in place when
/// this returns (a signal from then on is never the default action, which
/// would kill the process mid-start).
pub(crate) fn stop_signals() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let stop = token.clone();
    // Ends at the first signal, or when the command stops on its own.
    tokio::spawn(async move {
        let signalled = async {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                },
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signalled => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    token
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    /// Every `legsync ...` command line in README.md and docs/ parses as
    /// written: subcommands and flags exist and take what the docs give
    /// them. Optional `[...]` parts are taken, with their first `a|b`
    /// choice; shell pipes, redirections and comments are cut.
    #[test]
    fn every_documented_command_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            files.push(entry.unwrap().path());
        }
        let mut checked = 0;
        let mut failures = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut in_block = false;
            let mut pending = String::new();
            for (number, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("```") {
                    in_block = !in_block;
                    continue;
                }
                if !in_block {
                    continue;
                }
                let line = line.trim();
                if pending.is_empty() && !line.starts_with("legsync ") {
                    continue;
                }
                if let Some(head) = line.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(line);
                let command = normalize(&std::mem::take(&mut pending));
                let words: Vec<&str> = command.split_whitespace().collect();
                checked += 1;
                if let Err(e) = Cli::try_parse_from(&words) {
                    failures.push(format!(
                        "{}:{}: `{command}`: {}",
                        file.display(),
                        number + 1,
                        e.to_string().lines().next().unwrap_or("")
                    ));
                }
            }
        }
        assert!(checked > 30, "only {checked} commands found");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A documented line as one command: comment, pipe and redirection cut,
    /// `[...]` opened with its first choice.
    fn normalize(line: &str) -> String {
        let mut line = line.to_string();
        for cut in ["  #", " | ", " > "] {
            if let Some(at) = line.find(cut) {
                line.truncate(at);
            }
        }
        let mut out = String::new();
        let mut rest = line.as_str();
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            let inside = &rest[open + 1..close];
            out.push_str(inside.split('|').next().unwrap_or(""));
            rest = rest.get(close + 1..).unwrap_or("");
        }
        out.push_str(rest);
        // `cold|warm` outside brackets: the first choice.
        out.split_whitespace()
            .map(|w| w.split('|').next().unwrap_or(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
