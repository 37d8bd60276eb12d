//! The controller slot: which host controls the engine, under which epoch.
//!
//! The engine serves one controlling host at a time (as the vendor's engine
//! does), and is the arbiter of a host pair: whoever it accepts is active,
//! the others get `Busy` and stand by. Every accepted controller connection
//! gets the next **epoch**, kept in a small file beside the state file and
//! made durable before the host hears it, so an epoch only grows, across
//! engine restarts too. The file alone is not enough: an engine restarted
//! with a fresh state directory would start again at 1, and hosts would
//! refuse it (their ledgers hold higher epochs). So an epoch is also never
//! below the clock's microseconds since 1970: a lost file costs nothing
//! unless the clock went back as well, and the file covers the clock. Ledger records carry the epoch they were written
//! under, which is how a bill merged from both hosts of a pair tells newer
//! knowledge of a call from older (see docs/operations.md).
//!
//! The slot also plays the network for tests: `isolate` cuts off only the
//! current controller (its connection goes silent, and its new connections
//! are refused for a while) while the other hosts can still connect.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The host attached now.
#[derive(Debug, Clone)]
pub struct Controller {
    pub host: String,
    pub epoch: u64,
    /// Closes its connection.
    pub cancel: CancellationToken,
    /// Makes its connection go silent (a partition of this host only).
    pub isolate: CancellationToken,
}

#[derive(Debug, Default)]
struct Slot {
    last_epoch: u64,
    current: Option<Controller>,
    /// A host cut off until a time: its connections are refused.
    isolated: Option<(String, Instant)>,
}

/// The slot, shared by the engine port's connection handlers.
#[derive(Debug)]
pub struct ControllerSlot {
    epoch_file: PathBuf,
    slot: Mutex<Slot>,
}

/// Where the epoch is kept: beside the state file.
pub fn epoch_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".epoch");
    PathBuf::from(name)
}

impl ControllerSlot {
    /// Reads the last epoch given out (none yet: 0).
    pub fn open(state_file: &Path) -> anyhow::Result<ControllerSlot> {
        let epoch_file = epoch_path(state_file);
        let last_epoch = match std::fs::read_to_string(&epoch_file) {
            Ok(text) => text.trim().parse().with_context(|| {
                format!(
                    "epoch file {} is corrupt (it must hold one number)",
                    epoch_file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", epoch_file.display()));
            }
        };
        Ok(ControllerSlot {
            epoch_file,
            slot: Mutex::new(Slot {
                last_epoch,
                ..Slot::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `host` is cut off by `isolate` right now.
    pub fn is_isolated(&self, host: &str) -> bool {
        let mut slot = self.lock();
        match &slot.isolated {
            Some((name, until)) if Instant::now() < *until => name == host,
            Some(_) => {
                slot.isolated = None;
                false
            }
            None => false,
        }
    }

    /// Gives `host` the slot under the next epoch. The caller holds the
    /// engine's state lock and has checked that no host is attached; it
    /// must [`ControllerSlot::persist`] the epoch before telling the host.
    pub fn take(&self, host: &str, cancel: CancellationToken) -> Controller {
        let mut slot = self.lock();
        slot.last_epoch = (slot.last_epoch + 1).max(legsync::model::now_us());
        let controller = Controller {
            host: host.to_string(),
            epoch: slot.last_epoch,
            cancel,
            isolate: CancellationToken::new(),
        };
        slot.current = Some(controller.clone());
        controller
    }

    /// Writes `epoch` to the epoch file, durably (write, fsync, rename).
    pub async fn persist(&self, epoch: u64) -> anyhow::Result<()> {
        let path = self.epoch_file.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let tmp = path.with_extension("epoch.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            writeln!(file, "{epoch}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await?
        .with_context(|| format!("cannot save the epoch in {}", self.epoch_file.display()))
    }

    /// The slot is free again, if `epoch` still holds it.
    pub fn release(&self, epoch: u64) {
        let mut slot = self.lock();
        if slot.current.as_ref().is_some_and(|c| c.epoch == epoch) {
            slot.current = None;
        }
    }

    /// The host attached now, if any, and the last epoch given out.
    pub fn current(&self) -> (Option<Controller>, u64) {
        let slot = self.lock();
        (slot.current.clone(), slot.last_epoch)
    }

    /// Closes the current controller's connection (the `partition` command).
    pub fn disconnect(&self) {
        if let Some(current) = &self.lock().current {
            current.cancel.cancel();
        }
    }

    /// Cuts off the current controller for `duration`: its connection goes
    /// silent (the engine drops it when its heartbeat timeout passes, as it
    /// would for a host behind a broken network) and its new connections
    /// are refused until the time is up. Returns its name.
    pub fn isolate(&self, duration: Duration) -> Option<String> {
        let mut slot = self.lock();
        let current = slot.current.clone()?;
        current.isolate.cancel();
        slot.isolated = Some((current.host.clone(), Instant::now() + duration));
        Some(current.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn epochs_only_grow_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("engine.state");
        let slot = ControllerSlot::open(&state).unwrap();
        let first = slot.take("a", CancellationToken::new());
        slot.persist(first.epoch).await.unwrap();
        slot.release(first.epoch);
        let second = slot.take("b", CancellationToken::new());
        slot.persist(second.epoch).await.unwrap();
        assert!(second.epoch > first.epoch);
        // A stale release does not free the new controller's slot.
        slot.release(first.epoch);
        assert_eq!(slot.current().0.unwrap().host, "b");
        drop(slot);
        let again = ControllerSlot::open(&state).unwrap();
        let third = again.take("a", CancellationToken::new());
        assert!(third.epoch > second.epoch);
        // A file from the future (a clock that went back) still rules.
        std::fs::write(epoch_path(&state), format!("{}\n", u64::MAX / 2)).unwrap();
        let ahead = ControllerSlot::open(&state).unwrap();
        assert_eq!(
            ahead.take("a", CancellationToken::new()).epoch,
            u64::MAX / 2 + 1
        );
        // A lost file: the clock keeps the epochs growing.
        std::fs::remove_file(epoch_path(&state)).unwrap();
        let fresh = ControllerSlot::open(&state).unwrap();
        assert!(fresh.take("a", CancellationToken::new()).epoch > third.epoch);
        std::fs::write(epoch_path(&state), "x").unwrap();
        let err = ControllerSlot::open(&state).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
    }

    #[test]
    fn isolation_names_the_controller_and_refuses_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let slot = ControllerSlot::open(&dir.path().join("s")).unwrap();
        assert_eq!(slot.isolate(Duration::from_secs(5)), None);
        let a = slot.take("a", CancellationToken::new());
        assert_eq!(slot.isolate(Duration::from_secs(5)).as_deref(), Some("a"));
        assert!(a.isolate.is_cancelled());
        assert!(slot.is_isolated("a"));
        assert!(!slot.is_isolated("b"));
    }
}
