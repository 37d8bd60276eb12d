//! `legsync init DIR`: a starter setup an operator can run at once: a
//! config, a plugin directory with the `rules` plugin and starter rules.

use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to write into (created if missing; existing files are
    /// never overwritten).
    dir: PathBuf,
    /// The engine's address for the config.
    #[arg(long, default_value = "127.0.0.1:7000")]
    engine: String,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    legsync::config::check_engine_address(&args.engine)?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let plugins = dir.join("plugins.d");
    let config = dir.join("legsync.toml");
    let files: [(PathBuf, Vec<u8>); 3] = [
        (
            plugins.join("20-rules.wasm"),
            legsync::embedded::plugin("rules")?.to_vec(),
        ),
        (
            plugins.join("20-rules.rules"),
            legsync::embedded::STARTER_RULES.as_bytes().to_vec(),
        ),
        (
            config.clone(),
            starter_config(&dir, &args.engine).into_bytes(),
        ),
    ];
    let taken: Vec<String> = files
        .iter()
        .filter(|(path, _)| path.exists())
        .map(|(path, _)| path.display().to_string())
        .collect();
    anyhow::ensure!(
        taken.is_empty(),
        "not overwriting what is there: {}",
        taken.join(", ")
    );
    std::fs::create_dir_all(&plugins)?;
    // The ledger and the event log apart from the config: the host watches
    // the config's directory, and would wake at each of their writes.
    std::fs::create_dir_all(dir.join("data"))?;
    for (path, bytes) in &files {
        std::fs::write(path, bytes)?;
        println!("wrote {}", path.display());
    }
    println!(
        "next:\n  legsync check --config {0}\n  legsync run --config {0}",
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn starter_config(dir: &Path, engine: &str) -> String {
    // A remote engine without TLS must be allowed in so many words: the
    // starter says it, and says what to do instead.
    let link = if legsync::config::is_loopback(engine) {
        String::new()
    } else {
        "\n[link]\n\
         # A trial on a trusted network only: any client that reaches the engine's\n\
         # port can take the controller slot. Configure [tls] (`legsync tls init`)\n\
         # and remove this line.\n\
         allow_plain = true\n"
            .to_string()
    };
    format!(
        "# legsync config (docs/operations.md). Every key is optional.\n\
         engine = \"{engine}\"\n\
         grace_secs = 10\n\
         cdr = \"{}\"\n\
         events = \"{}\"\n\
         admin = \"127.0.0.1:9464\"\n\
         {link}\
         \n\
         [policy]\n\
         plugin_dir = \"{}\"\n",
        dir.join("data").join("cdr.jsonl").display(),
        dir.join("data").join("events.jsonl").display(),
        dir.join("plugins.d").display(),
    )
}
