//! Which version of the contract a component was built against.
//!
//! The exported interface's name carries the package version
//! (`legsync:policy/policy@0.3.0`), so the version is read from the component
//! before anything is instantiated, and a mismatch is reported with both
//! versions instead of a bare link error.
//!
//! The host speaks [`CONTRACT_VERSION`] and still loads plugins built for
//! 0.3.0 and 0.2.0. 0.3.0 differs from 0.4.0 in the termination notice (no
//! `held` / `decided-by`) and the `host` import (no `held-legs`, `count`);
//! 0.2.0 also in the type of `leg-batch.text` (a `string`, bytes since
//! 0.3.0). An old plugin gets the same batches lowered with its types
//! (`plugin`) and its `host` import (`bindings`).

use super::error::PolicyError;
use wasmtime::component::Component;

/// The contract version this host speaks, and that the SDKs build for.
pub const CONTRACT_VERSION: &str = "0.4.0";
const EXPORT_PREFIX: &str = "legsync:policy/policy";
const HOST_PREFIX: &str = "legsync:policy/host";

/// The contract versions the host loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// 0.2.0: the batch's text is a `string`.
    V0_2,
    /// 0.3.0: the batch's text is `list<u8>`.
    V0_3,
    /// 0.4.0 (current): termination notices say `held` and `decided-by`;
    /// the host offers `held-legs` and `count`.
    V0_4,
}

impl Contract {
    /// Every version the host loads, newest first.
    pub const ALL: [Contract; 3] = [Contract::V0_4, Contract::V0_3, Contract::V0_2];

    /// The older versions, whose `host` import the host links by hand.
    pub const OLDER: [Contract; 2] = [Contract::V0_3, Contract::V0_2];

    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_2 => "0.2.0",
            Contract::V0_3 => "0.3.0",
            Contract::V0_4 => CONTRACT_VERSION,
        }
    }

    /// The name of the interface a plugin of this version exports.
    pub fn policy_export(self) -> String {
        format!("{EXPORT_PREFIX}@{}", self.version())
    }

    /// The name of the host interface a plugin of this version imports.
    pub fn host_import(self) -> String {
        format!("{HOST_PREFIX}@{}", self.version())
    }

    fn parse(version: &str) -> Option<Contract> {
        Contract::ALL.into_iter().find(|c| c.version() == version)
    }
}

/// What a component declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractInfo {
    /// The contract version it was built against (`contract.version()`).
    pub contract: Contract,
    /// The names of everything it imports (WASI interfaces, the host log...).
    pub imports: Vec<String>,
}

/// What the host loads, for error messages: "0.4.0 (and 0.3.0, 0.2.0)".
fn spoken() -> String {
    let older: Vec<&str> = Contract::OLDER.iter().map(|c| c.version()).collect();
    format!("{CONTRACT_VERSION} (and {})", older.join(", "))
}

/// Reads the contract version of `component` and rejects any the host does
/// not load.
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
        Some(version) => match Contract::parse(&version) {
            Some(contract) => Ok(ContractInfo { contract, imports }),
            None => Err(PolicyError::IncompatibleContract {
                plugin: plugin.to_string(),
                found: version,
                expected: spoken(),
            }),
        },
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
    fn export_and_import_names_carry_the_contract_version() {
        assert_eq!(
            Contract::V0_4.policy_export(),
            "legsync:policy/policy@0.4.0"
        );
        assert_eq!(Contract::V0_2.host_import(), "legsync:policy/host@0.2.0");
        assert_eq!(Contract::parse(CONTRACT_VERSION), Some(Contract::V0_4));
        assert_eq!(Contract::parse("0.3.0"), Some(Contract::V0_3));
        assert_eq!(Contract::parse("0.2.0"), Some(Contract::V0_2));
        assert_eq!(Contract::parse("0.1.0"), None);
        assert_eq!(Contract::parse("0.5.0"), None);
        assert_eq!(spoken(), "0.4.0 (and 0.3.0, 0.2.0)");
    }
}
