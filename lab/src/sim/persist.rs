//! The state file: the media units' view of active calls, which is all that
//! survives an engine restart. Written whole, beside the old one, then
//! renamed, so a crash leaves either the old or the new view, never half.

use super::media::{MediaUnits, MediaView};
use anyhow::Context;
use std::path::Path;

/// Reads the state file; a missing file is an engine with no calls.
pub fn load(path: &Path) -> anyhow::Result<MediaUnits> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes).with_context(|| {
            format!(
                "state file {} is corrupt; move it away to start empty",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MediaUnits::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

/// Replaces the state file atomically.
pub fn save(path: &Path, view: &MediaView) -> anyhow::Result<()> {
    let bytes = postcard::to_allocvec(view)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::state::EngineState;

    #[test]
    fn round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.state");
        assert_eq!(load(&path).unwrap(), MediaUnits::default());
        let mut state = EngineState::default();
        state.preload(6, 10_000_000);
        save(&path, &state.media_view()).unwrap();
        let mut loaded = load(&path).unwrap();
        loaded.legs.sort_unstable_by_key(|l| l.id);
        loaded.links.sort_unstable_by_key(|l| l.id);
        assert_eq!(loaded, state.media_units());
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("is corrupt"));
    }
}
