//! The Python and JavaScript examples (`plugins/python/EXAMPLE/`,
//! `plugins/js/EXAMPLE/`), built with the pinned toolchains exactly as
//! docs/plugin-guide.md builds them. `.ci/toolchains` installs the
//! toolchains into `target/toolchains/`; without one a test says SKIPPED
//! and stops, and under `CI=true` it fails instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is in the repository")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Build {
    Python,
    JavaScript,
    /// componentize-js with its defaults (imports wasi:http and more).
    JavaScriptDefaults,
}

impl Build {
    pub fn language(self) -> &'static str {
        match self {
            Build::Python => "Python",
            Build::JavaScript | Build::JavaScriptDefaults => "JavaScript",
        }
    }

    /// The toolchain's command, where `.ci/toolchains` installs it.
    pub fn tool(self) -> PathBuf {
        repo().join("target/toolchains").join(match self {
            Build::Python => "python/bin/componentize-py",
            Build::JavaScript | Build::JavaScriptDefaults => "js/node_modules/.bin/jco",
        })
    }

    /// The command that builds `example`, as docs/plugin-guide.md gives it.
    pub fn command(self, example: &str, out: &Path) -> Command {
        let mut command = Command::new(self.tool());
        // componentize-py would leave __pycache__ next to the sources.
        command
            .current_dir(repo())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        match self {
            Build::Python => {
                command.args(["-d", "wit", "-w", "policy-plugin", "componentize", "app"]);
                command.args(["-p", "plugins/python", "-p"]);
                command.arg(format!("plugins/python/{example}"));
                command.arg("-o");
            }
            Build::JavaScript | Build::JavaScriptDefaults => {
                command.arg("componentize");
                command.arg(format!("plugins/js/{example}/app.js"));
                command.args([
                    "--bundle",
                    "--bundle-config",
                    "plugins/js/bundle.config.mjs",
                    "--wit",
                    "wit/policy.wit",
                    "--world-name",
                    "policy-plugin",
                ]);
                if self == Build::JavaScript {
                    command.args(["--disable", "http", "fetch-event"]);
                }
                command.arg("--out");
            }
        }
        command.arg(out);
        command
    }
}

/// Under CI, installs the pinned toolchains (`.ci/toolchains`, into
/// `target/toolchains/`) if `.ci/run` has not: there they are required.
/// Elsewhere nothing is downloaded behind the developer's back.
pub fn install_toolchains_under_ci() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            let status = Command::new(repo().join(".ci/toolchains"))
                .status()
                .expect(".ci/toolchains runs");
            assert!(status.success(), ".ci/toolchains failed");
        }
    });
}

/// What a build printed: (status ok, stdout and stderr).
pub type BuildOutput = (bool, String);

/// `example` built for `build`, once per test run; `None` (after saying
/// so) when the toolchain is not installed, a failure under CI.
pub fn built(build: Build, example: &str) -> Option<PathBuf> {
    built_with_output(build, example).map(|(path, _)| path)
}

/// [`built`], with what the toolchain printed.
pub fn built_with_output(build: Build, example: &str) -> Option<(PathBuf, String)> {
    type Cache = Mutex<HashMap<(Build, String), Result<(PathBuf, String), String>>>;
    static BUILT: OnceLock<Cache> = OnceLock::new();
    if !build.tool().is_file() {
        install_toolchains_under_ci();
    }
    if !build.tool().is_file() {
        let missing = format!(
            "the {} plugin toolchain is not installed ({} is missing); run .ci/toolchains",
            build.language(),
            build.tool().display()
        );
        super::unavailable(&missing);
        return None;
    }
    let mut cache = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let built = cache
        .entry((build, example.to_string()))
        .or_insert_with(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("language-plugins");
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join(format!("{build:?}-{example}.wasm").to_lowercase());
            let output = build
                .command(example, &out)
                .output()
                .expect("the toolchain runs");
            let said = super::text(&output.stdout) + &super::text(&output.stderr);
            if output.status.success() && out.is_file() {
                Ok((out, said))
            } else {
                Err(format!(
                    "building the {} example {example} failed:\n{said}",
                    build.language()
                ))
            }
        });
    Some(built.clone().unwrap_or_else(|e| panic!("{e}")))
}
