//! `legsync tls init`: a trial PKI for the engine link.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a trial CA, an engine certificate and a host certificate to
    /// DIR, and print the `[tls]` section and the engine-sim flags that use
    /// them. For trials: production certificates come from your own PKI.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the files (created if missing).
    dir: PathBuf,
    /// A name (DNS name or IP address) the engine's certificate carries:
    /// the address hosts dial. Repeat for several.
    #[arg(long = "engine-name", default_value = "127.0.0.1")]
    engine_names: Vec<String>,
}

pub fn run(command: TlsCommand) -> anyhow::Result<ExitCode> {
    let TlsCommand::Init(args) = command;
    let pki = legsync::tls::generate(&args.dir, &args.engine_names)?;
    println!(
        "wrote {}: ca.pem, engine.pem, engine.key, host.pem, host.key (the CA's key is not kept)",
        args.dir.display()
    );
    println!("\nin the host's config:\n");
    println!("[tls]");
    println!("ca = \"{}\"", pki.host.ca.display());
    println!("cert = \"{}\"", pki.host.cert.display());
    println!("key = \"{}\"", pki.host.key.display());
    // The name the engine's certificate carries: the host checks it, and
    // `engine` may be an address that is not that name.
    if let Some(name) = args.engine_names.first() {
        println!("server_name = \"{name}\"");
    }
    println!(
        "\nfor engine-sim:\n\n  --tls-cert {} --tls-key {} --tls-client-ca {}",
        pki.engine.cert.display(),
        pki.engine.key.display(),
        pki.engine.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}
