//! What the servers sharing storage tell each other (see [`crate::peers`]).

use std::sync::Arc;

use super::Uploads;
use crate::peers::{Announce, ClaimNote, SharedDirectory};

impl Uploads {
    /// Where the servers sharing this storage find each other; `None` where storage is
    /// not shared.
    pub fn peer_directory(&self) -> Option<SharedDirectory> {
        self.backend.peer_directory()
    }

    /// From now on, tells `to` about every claim this process writes.
    pub fn announce_to(&self, to: Arc<dyn Announce>) {
        self.backend.announce_to(to);
    }

    /// Claims another server wrote: kept as if read from storage, and a chunk kept here
    /// waiting for the whole-file hash to reach it goes on at once.
    pub fn learn(&self, notes: &[ClaimNote]) {
        for note in notes {
            if let Some((from, after)) = self.backend.learn(note) {
                self.hash.told(note.upload, from, &after);
            }
        }
    }
}
