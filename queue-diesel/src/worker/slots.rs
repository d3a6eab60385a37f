//! The channel slots a worker holds: how capacities hold across every worker of a database.

use std::collections::HashMap;

use queue_core::ChannelConfig;

use crate::connection::{AnyConnection, Backend};
use crate::database::Database;
use crate::run::chain;
use crate::store::Store;

/// The channel slots this worker holds, shared with every worker of the database: PostgreSQL
/// advisory locks on one connection of its own, which the server frees if this process dies.
#[derive(Debug)]
pub(super) struct Slots {
    /// `None` on SQLite (its single writer keeps channels within capacity) or while
    /// disconnected.
    conn: Option<AnyConnection>,
    url: Option<String>,
    backend: Backend,
    held: HashMap<String, Vec<usize>>,
    /// Counts reconnections: slots of an earlier session were freed with it and must not be
    /// unlocked again (the number may belong to another job now).
    pub(super) session: u64,
}

impl Slots {
    pub(super) fn for_database(db: &Database) -> Slots {
        let url = (!db.backend().single_writer()).then(|| db.raw_url());
        Slots { conn: None, url, backend: db.backend(), held: HashMap::new(), session: 0 }
    }

    /// Up to `want` slots of `node` and of each configured ancestor, as many of each: the list
    /// per channel, nearest first. Empty lists when the channel is full across workers.
    pub(super) fn acquire(
        &mut self,
        channels: &ChannelConfig,
        node: &str,
        want: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let nodes: Vec<(String, usize)> =
            channels.chain(node).map(|c| (c.name.clone(), c.capacity)).collect();
        let Some(url) = self.url.clone() else {
            return nodes.into_iter().map(|(name, _)| (name, (0..want).collect())).collect();
        };
        if self.conn.is_none() {
            match crate::store::connect(&url, self.backend) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.session += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "cannot reach the database to take channel slots");
                    return Vec::new();
                }
            }
        }
        let mut taken: Vec<(String, Vec<usize>)> = Vec::new();
        let mut want = want;
        for (name, capacity) in nodes {
            let held = self.held.get(&name).cloned().unwrap_or_default();
            let Some(conn) = self.conn.as_mut() else { break };
            match conn.channel_slots_acquire(&name, capacity, want, &held) {
                Ok(got) => {
                    want = got.len();
                    self.held.entry(name.clone()).or_default().extend(&got);
                    taken.push((name, got));
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "cannot take channel slots; reconnecting");
                    // The server freed this connection's locks with it.
                    self.conn = None;
                    self.held.clear();
                    return Vec::new();
                }
            }
            if want == 0 {
                break;
            }
        }
        // Every channel of the chain keeps as many slots as the scarcest one gave.
        let mut extra = Vec::new();
        for (name, slots) in &mut taken {
            if slots.len() > want {
                extra.push((name.clone(), slots.split_off(want)));
            }
        }
        self.release(extra);
        taken
    }

    /// Give slots back.
    pub(super) fn release(&mut self, slots: Vec<(String, Vec<usize>)>) {
        for (name, slots) in slots {
            if slots.is_empty() {
                continue;
            }
            if let Some(held) = self.held.get_mut(&name) {
                held.retain(|s| !slots.contains(s));
            }
            if let Some(conn) = self.conn.as_mut()
                && let Err(e) = conn.channel_slots_release(&name, &slots)
            {
                tracing::warn!(error = %chain(&e), "cannot give channel slots back; reconnecting");
                self.conn = None;
                self.held.clear();
            }
        }
    }

    /// Give back the slots of a finished job, if they are still this session's.
    pub(super) fn release_job(&mut self, slots: Vec<(String, usize)>, session: u64) {
        if session == self.session {
            self.release(slots.into_iter().map(|(name, slot)| (name, vec![slot])).collect());
        }
    }
}
