//! The `legsync` binary: see `legsync --help`.

fn main() -> std::process::ExitCode {
    legsync::cli::main()
}
