//! Which version of the contract a component was built against.
//!
//! The exported interface's name carries the package version
//! (`legsync:policy/policy@0.2.0`), so the version is read from the component
//! before anything is instantiated, and a mismatch is reported with both
//! versions instead of a bare link error.

use super::error::PolicyError;
use wasmtime::component::Component;

/// The contract version this host speaks.
pub const CONTRACT_VERSION: &str = "0.2.0";
const EXPORT_PREFIX: &str = "legsync:policy/policy";
/// The exported interface's full name for [`CONTRACT_VERSION`].
pub const POLICY_EXPORT: &str = "legsync:policy/policy@0.2.0";

/// What a component declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractInfo {
    /// The contract version it was built against.
    pub version: String,
    /// The names of everything it imports (WASI interfaces, the host log...).
    pub imports: Vec<String>,
}

/// Reads the contract version of `component` and rejects any other than
/// [`CONTRACT_VERSION`].
pub fn check(
    plugin: &str,
    component: &Component,
    engine: &wasmtime::Engine,
) -> Result<ContractInfo, PolicyError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let imports = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let found = exports.iter().find_map(|name| {
        let rest = name.strip_prefix(EXPORT_PREFIX)?;
        Some(
            rest.strip_prefix('@')
                .unwrap_or("(unversioned)")
                .to_string(),
        )
    });
    match found {
        Some(version) if version == CONTRACT_VERSION => Ok(ContractInfo { version, imports }),
        Some(version) => Err(PolicyError::IncompatibleContract {
            plugin: plugin.to_string(),
            found: version,
            expected: CONTRACT_VERSION.to_string(),
        }),
        None => Err(PolicyError::MissingExport {
            plugin: plugin.to_string(),
            expected: CONTRACT_VERSION.to_string(),
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_name_carries_the_contract_version() {
        assert_eq!(POLICY_EXPORT, format!("{EXPORT_PREFIX}@{CONTRACT_VERSION}"));
    }
}
