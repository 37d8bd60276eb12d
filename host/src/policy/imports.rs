//! What a plugin imports, and what the host grants of it.
//!
//! The host links the contract's `host` interface and WASI 0.2 (with a
//! context that grants nothing: no files, no network, no environment).
//! Toolchains other than Rust import more by default (componentize-js
//! imports `wasi:http`): such imports are linked as functions that trap, so
//! the plugin loads and fails only if it actually calls one. `plugin check`
//! lists every import with what it gets.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType};

/// What the host gives an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The contract's own interface (`legsync:policy/host`).
    Contract,
    /// A WASI interface that works as usual (clocks, random, I/O streams,
    /// the CLI's stdio).
    Wasi,
    /// Linked, but every call is refused: `why`.
    Denied(&'static str),
    /// Not linked: calling it traps.
    Trap,
}

impl Grant {
    /// How `plugin check` describes it.
    pub fn describe(self) -> &'static str {
        match self {
            Grant::Contract => "granted (the contract)",
            Grant::Wasi => "granted",
            Grant::Denied(why) => why,
            Grant::Trap => "not granted by the host: a call to it traps",
        }
    }
}

/// The WASI 0.2 packages the host links (`wasmtime_wasi::p2`).
const WASI_P2: [&str; 6] = ["io", "clocks", "random", "cli", "filesystem", "sockets"];

/// What the host gives the import named `name` (`wasi:io/streams@0.2.3`,
/// `legsync:policy/host@0.2.0`, `wasi:http/types@0.2.10`...).
pub fn classify(name: &str) -> Grant {
    if name.starts_with("legsync:policy/") {
        return Grant::Contract;
    }
    let Some(rest) = name.strip_prefix("wasi:") else {
        return Grant::Trap;
    };
    let package = rest.split('/').next().unwrap_or("");
    let version = rest.split('@').nth(1).unwrap_or("");
    if !WASI_P2.contains(&package) || !version.starts_with("0.2.") {
        return Grant::Trap;
    }
    match package {
        "sockets" => Grant::Denied("denied: no network (every socket call fails)"),
        "filesystem" => Grant::Denied("denied: no files (nothing is opened for plugins)"),
        _ => Grant::Wasi,
    }
}

/// A resource of an import linked as traps: nothing can create one, since
/// every function that would traps.
struct TrappedResource;

/// Links every import of `component` that [`classify`] says traps: each
/// function traps when called, each resource it introduces is a stub.
///
/// Not wasmtime's `define_unknown_imports_as_traps`: that one looks every
/// import up by its exact name, so a component importing WASI 0.2.12 (which
/// the linker serves as 0.2.6, by semver) had `wasi:io/poll@0.2.12` stubbed
/// over, and the real clocks then did not match the stubbed `pollable`
/// (componentize-js's default build failed to load). Here, only the trapped
/// imports are touched, and the resources they merely use from granted
/// imports (`pollable`, streams) are left to those.
pub fn define_as_traps<T: 'static>(
    linker: &mut Linker<T>,
    component: &Component,
    engine: &wasmtime::Engine,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    let instances = |trapped: bool| {
        ty.imports(engine)
            .filter(move |(name, _)| (classify(name) == Grant::Trap) == trapped)
            .filter_map(|(name, item)| match item.ty {
                ComponentItem::ComponentInstance(instance) => Some((name, instance)),
                _ => None,
            })
    };
    let granted: Vec<ResourceType> = instances(false)
        .flat_map(|(_, instance)| {
            instance
                .exports(engine)
                .filter_map(|(_, item)| match item.ty {
                    ComponentItem::Resource(resource) => Some(resource),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (name, instance) in instances(true) {
        let mut linked = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    linked.func_new(export, move |_, _, _, _| {
                        wasmtime::bail!("{what} is not granted to plugins by the legsync host")
                    })?;
                }
                ComponentItem::Resource(resource) if !granted.contains(&resource) => {
                    linked.resource(export, ResourceType::host::<TrappedResource>(), |_, _| {
                        Ok(())
                    })?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_granted_denied_or_trapped() {
        assert_eq!(classify("legsync:policy/host@0.2.0"), Grant::Contract);
        assert_eq!(classify("wasi:io/streams@0.2.3"), Grant::Wasi);
        assert_eq!(classify("wasi:cli/stdout@0.2.0"), Grant::Wasi);
        assert!(matches!(
            classify("wasi:sockets/tcp@0.2.3"),
            Grant::Denied(_)
        ));
        assert!(matches!(
            classify("wasi:filesystem/preopens@0.2.3"),
            Grant::Denied(_)
        ));
        for trapped in [
            "wasi:http/types@0.2.10",
            "wasi:io/streams@0.3.0",
            "fixture:extra/lookup",
        ] {
            assert_eq!(classify(trapped), Grant::Trap, "{trapped}");
        }
    }
}
