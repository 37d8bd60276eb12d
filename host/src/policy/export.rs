//! The plugin exports the host calls after `init`: each has its own health
//! record and its own measured cost, kept in a [`PerExport`] indexed by the
//! enum (a new export added here gets its own slot everywhere, checked by
//! the compiler, instead of sharing another's by a name lookup's default).

/// One export of `legsync:policy/policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `on-call-leg-sync`: `OnCallLegSync` for a batch of legs.
    LegSync,
    /// `on-link-sync`: `OnLinkSync` for a batch of links.
    LinkSync,
    /// `on-call-leg-terminated`: `OnCallLegTerminated` notices.
    Terminated,
    /// `on-mixer-sync`: the mixer decision for a batch of mixers (0.4.0).
    MixerSync,
    /// `on-mixer-terminated`: mixer termination notices (0.4.0).
    MixerTerminated,
}

impl Export {
    pub const ALL: [Export; 5] = [
        Export::LegSync,
        Export::LinkSync,
        Export::Terminated,
        Export::MixerSync,
        Export::MixerTerminated,
    ];

    /// The export's name in the WIT world (and in logs and metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Export::LegSync => "on-call-leg-sync",
            Export::LinkSync => "on-link-sync",
            Export::Terminated => "on-call-leg-terminated",
            Export::MixerSync => "on-mixer-sync",
            Export::MixerTerminated => "on-mixer-terminated",
        }
    }
}

impl Export {
    /// What one item of its batches is (the `item` label of the decision
    /// metric): `leg`, `link` or `mixer`.
    pub const fn item(self) -> &'static str {
        match self {
            Export::LegSync | Export::Terminated => "leg",
            Export::LinkSync => "link",
            Export::MixerSync | Export::MixerTerminated => "mixer",
        }
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One `T` per export.
#[derive(Debug, Default)]
pub struct PerExport<T>([T; 5]);

impl<T> PerExport<T> {
    /// Every export's value, with its export.
    pub fn iter(&self) -> impl Iterator<Item = (Export, &T)> {
        Export::ALL.into_iter().zip(&self.0)
    }
}

impl<T> std::ops::Index<Export> for PerExport<T> {
    type Output = T;
    fn index(&self, export: Export) -> &T {
        // The discriminants are 0 to 4, the order of `ALL`.
        &self.0[export as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_export_has_its_own_slot() {
        let slots = PerExport([10, 20, 30, 40, 50]);
        for (i, export) in Export::ALL.into_iter().enumerate() {
            assert_eq!(slots[export], (i + 1) * 10, "{export}");
        }
        let names: Vec<_> = slots.iter().map(|(e, _)| e.name()).collect();
        assert_eq!(
            names,
            [
                "on-call-leg-sync",
                "on-link-sync",
                "on-call-leg-terminated",
                "on-mixer-sync",
                "on-mixer-terminated"
            ]
        );
    }
}
