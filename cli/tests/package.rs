//! The Debian package `.ci/package` builds (`cargo deb`, metadata in
//! host/Cargo.toml): its metadata (`dpkg-deb --info`), its files, and the
//! binary it carries, unpacked (`dpkg-deb -x`) into a temporary directory:
//! `legsync --version` names this build, and `legsync check` passes on the
//! packaged config with its paths pointed at the temporary directory.
//!
//! The package is built by `.ci/package` (a release build: minutes), which
//! `.ci/run` runs before the tests. Without a package this test says
//! SKIPPED; under `CI=true` it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest package in target/debian, if any.
fn package() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("legsync_"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    if newest.is_none() {
        let missing = format!(
            "no package in {} (build it with .ci/package)",
            dir.display()
        );
        common::unavailable(&missing);
    }
    newest
}

fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        common::text(&out.stdout) + &common::text(&out.stderr),
    )
}

fn dpkg_deb(args: &[&str]) -> String {
    let (ok, said) = run(Path::new("dpkg-deb"), args);
    assert!(ok, "dpkg-deb {args:?}: {said}");
    said
}

#[test]
fn the_package_installs_a_working_legsync() {
    let Some(deb) = package() else {
        return;
    };
    let deb = deb.to_str().unwrap();

    // Metadata.
    let info = dpkg_deb(&["--info", deb]);
    for field in [
        "Package: legsync",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Section: net",
        "Depends: ",
        "Maintainer: ",
    ] {
        assert!(info.contains(field), "no `{field}` in\n{info}");
    }
    let conffiles = dpkg_deb(&["--info", deb, "conffiles"]);
    assert!(
        conffiles.contains("/etc/legsync/legsync.toml"),
        "{conffiles}"
    );
    assert!(
        conffiles.contains("/etc/logrotate.d/legsync"),
        "{conffiles}"
    );

    // Files.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    dpkg_deb(&["-x", deb, root.to_str().unwrap()]);
    let file = |path: &str| root.join(path);
    for path in [
        "usr/bin/legsync",
        "lib/systemd/system/legsync.service",
        "etc/legsync/legsync.toml",
        "etc/logrotate.d/legsync",
        "usr/share/legsync/legsync-alerts.yml",
        "usr/share/legsync/legsync-alerts.test.yml",
        "usr/share/legsync/legsync-dashboard.json",
        "usr/share/doc/legsync/operations.md",
        "usr/share/bash-completion/completions/legsync",
        "usr/share/zsh/vendor-completions/_legsync",
        "usr/share/fish/vendor_completions.d/legsync.fish",
    ] {
        let meta = std::fs::metadata(file(path))
            .unwrap_or_else(|e| panic!("{path} is not in the package: {e}"));
        assert!(meta.len() > 0, "{path} is empty");
    }
    let man = file("usr/share/man/man1");
    let pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in [
        "legsync.1",
        "legsync-run.1",
        "legsync-check.1",
        "legsync-cdr-bill.1",
    ] {
        assert!(
            pages
                .iter()
                .any(|p| p == page || *p == format!("{page}.gz")),
            "no man page {page} in {pages:?}"
        );
    }
    // The unit runs the binary where the package puts it.
    let unit = std::fs::read_to_string(file("lib/systemd/system/legsync.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/legsync run"), "{unit}");

    // The packaged binary: this build, and it checks the packaged config.
    let legsync = file("usr/bin/legsync");
    let (ok, version) = run(&legsync, &["--version"]);
    assert!(ok, "{version}");
    let (_, ours) = run(Path::new(env!("CARGO_BIN_EXE_legsync")), &["--version"]);
    if version != ours {
        let stale = format!(
            "the package in target/debian is another build ({}) than this one ({}): .ci/package rebuilds it",
            version.trim(),
            ours.trim()
        );
        common::unavailable(&stale);
        return;
    }
    let (ok, said) = run(
        &legsync,
        &["tls", "init", dir.path().join("tls").to_str().unwrap()],
    );
    assert!(ok, "{said}");
    let plugins = dir.path().join("plugins.d");
    let (ok, said) = run(
        &legsync,
        &[
            "plugin",
            "export",
            "rules",
            plugins.to_str().unwrap(),
            "--as",
            "20-rules",
        ],
    );
    assert!(ok, "{said}");
    for sub in ["state", "logs", "cache"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let at = |sub: &str| dir.path().join(sub).to_str().unwrap().to_string();
    let config = std::fs::read_to_string(file("etc/legsync/legsync.toml"))
        .unwrap()
        .replace("/etc/legsync/tls", &at("tls"))
        .replace("/run/credentials/legsync.service", &at("tls"))
        .replace("/etc/legsync/plugins.d", &at("plugins.d"))
        .replace("/var/cache/legsync", &at("cache"))
        .replace("/var/lib/legsync", &at("state"))
        .replace("/var/log/legsync", &at("logs"))
        .replace("127.0.0.1:9464", "127.0.0.1:0")
        .replace("0.0.0.0:9465", "127.0.0.1:0");
    let config_path = dir.path().join("legsync.toml");
    std::fs::write(&config_path, config).unwrap();
    let (ok, said) = run(
        &legsync,
        &["check", "--config", config_path.to_str().unwrap()],
    );
    assert!(ok, "{said}");
    assert!(said.contains("everything loads"), "{said}");
}
