//! Open chat sockets per owner and how sockets ended: `WsHub`, shared through the app
//! state (so it imports nothing of the server), and `SocketSlot`, one counted socket.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::store::Owner;

/// Open sockets per owner, and how sockets ended (for operators and tests).
#[derive(Debug, Default)]
pub struct WsHub {
    open: Mutex<HashMap<Owner, usize>>,
    closes: Mutex<BTreeMap<u16, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl WsHub {
    /// Counts a socket of `owner` in, unless it already has `limit` open.
    pub(super) fn enter(self: &Arc<Self>, owner: &Owner, limit: usize) -> Option<SocketSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(owner.clone()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            hub: self.clone(),
            owner: owner.clone(),
        })
    }

    /// Authenticated sockets open now.
    pub fn open_sockets(&self) -> usize {
        lock(&self.open).values().sum()
    }

    /// Sockets the server closed with `code` so far.
    pub fn closed_with(&self, code: u16) -> u64 {
        lock(&self.closes).get(&code).copied().unwrap_or(0)
    }

    pub(super) fn record_close(&self, code: u16) {
        *lock(&self.closes).entry(code).or_default() += 1;
    }
}

/// One counted socket; leaves the count when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    hub: Arc<WsHub>,
    owner: Owner,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.hub.open);
        if let Some(n) = open.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.owner);
            }
        }
    }
}
