//! The example plugins, built with this binary and carried inside it: a
//! `legsync` installed anywhere (`cargo install --path cli`) can write them
//! out (`legsync plugin export`, `legsync init`) and run its demo without
//! the build folder it came from.

/// `(name, component)` of every example plugin.
pub const PLUGINS: &[(&str, &[u8])] = &[
    (
        "accept-all",
        include_bytes!(concat!(env!("LEGSYNC_BUILT_PLUGINS"), "/accept_all.wasm")),
    ),
    (
        "rules",
        include_bytes!(concat!(env!("LEGSYNC_BUILT_PLUGINS"), "/rules.wasm")),
    ),
    (
        "nap-cap",
        include_bytes!(concat!(env!("LEGSYNC_BUILT_PLUGINS"), "/nap_cap.wasm")),
    ),
];

/// The component of the example plugin `name`.
pub fn plugin(name: &str) -> anyhow::Result<&'static [u8]> {
    PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, wasm)| *wasm)
        .ok_or_else(|| {
            let names: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).collect();
            anyhow::anyhow!(
                "no example plugin `{name}`; there are: {}",
                names.join(", ")
            )
        })
}

/// The starter rules written by `legsync init`.
pub const STARTER_RULES: &str = "# The rules plugin's rules (docs/plugin-guide.md). Rules are tried in\n\
# order; the first whose conditions all hold decides; no match: `default`.\n\
default = \"rebuild\"\n\
\n\
[[rule]]\n\
name = \"no premium numbers\"\n\
action = \"refuse\"\n\
called_prefix = [\"1900\", \"1976\"]\n";

#[cfg(test)]
mod tests {
    #[test]
    fn every_example_is_a_component_and_names_are_checked() {
        for (name, wasm) in super::PLUGINS {
            // A component's preamble: \0asm, then a component layer.
            assert_eq!(&wasm[..4], b"\0asm", "{name}");
            assert!(wasm.len() > 1_000, "{name}");
        }
        let err = super::plugin("nope").unwrap_err().to_string();
        assert!(
            err.contains("there are: accept-all, rules, nap-cap"),
            "{err}"
        );
    }
}
