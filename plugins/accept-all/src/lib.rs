//! `accept-all`: rebuilds every leg and link the engine offers. The policy of
//! an application that wants to keep every call it can.

use legsync_plugin_sdk::{Policy, export_policy};

struct AcceptAll;

impl Policy for AcceptAll {
    fn init(_rules: &str) -> Result<Self, String> {
        Ok(AcceptAll)
    }
}

export_policy!(AcceptAll);
