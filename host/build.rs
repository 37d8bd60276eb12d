//! Builds the guest plugins in `plugins/` to wasm32-wasip2 components, so that
//! an ordinary `cargo build` / `cargo test` of the host has them ready.
//!
//! The plugins are their own cargo workspace with their own target directory
//! (next to this build's profile directories), so the nested build never
//! fights the outer one for a lock and stays incremental. The directory of the
//! built `.wasm` files is exported to the host crate as `LEGSYNC_BUILT_PLUGINS`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir
        .parent()
        .expect("host/ lives in the repository root");
    let plugins = repo.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());
    build_details(repo);

    ensure_wasm_target();

    let target_dir = plugin_target_dir();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // What the outer build sets for itself must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        build.env_remove(var);
    }
    let output = build
        .output()
        .expect("cannot run cargo to build the plugins");
    if !output.status.success() {
        panic!(
            "building the plugins in {} for {WASM_TARGET} failed:\n{}",
            plugins.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(WASM_TARGET).join("release");
    println!("cargo:rustc-env=LEGSYNC_BUILT_PLUGINS={}", built.display());
}

/// `<target>/wasm-plugins`, found from `OUT_DIR` (`<target>/<profile>/build/<pkg>/out`).
fn plugin_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let build_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .expect("OUT_DIR is inside a `build` directory");
    let profile_parent = build_dir
        .parent()
        .and_then(Path::parent)
        .expect("the build directory has a profile directory above it");
    profile_parent.join("wasm-plugins")
}

/// Adds the wasm32-wasip2 standard library when it is missing. rustup does not
/// install it by itself when `RUSTUP_AUTO_INSTALL=0`, even though
/// `rust-toolchain.toml` names it.
fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("cannot run rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).exists() {
        return;
    }
    println!("cargo:warning=adding the {WASM_TARGET} target with rustup (needed to build plugins)");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .unwrap_or_else(|e| {
            panic!("the {WASM_TARGET} target is missing and rustup cannot run ({e}); install it with `rustup target add {WASM_TARGET}`")
        });
    assert!(
        status.success(),
        "`rustup target add {WASM_TARGET}` failed; the plugins cannot be built without it"
    );
}

/// The commit and its date, for `legsync --version` and the build-info
/// metric (`unknown` outside a git checkout, such as a source tarball).
fn build_details(repo: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    println!(
        "cargo:rustc-env=LEGSYNC_COMMIT={}",
        git(&["rev-parse", "--short=12", "HEAD"])
    );
    println!(
        "cargo:rustc-env=LEGSYNC_COMMIT_DATE={}",
        git(&["log", "-1", "--format=%cs"])
    );
    // A new commit moves the branch's ref, which HEAD names.
    let head = repo.join(".git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
        if let Ok(text) = std::fs::read_to_string(&head)
            && let Some(branch) = text.trim().strip_prefix("ref: ")
        {
            println!(
                "cargo:rerun-if-changed={}",
                repo.join(".git").join(branch).display()
            );
        }
    }
}
