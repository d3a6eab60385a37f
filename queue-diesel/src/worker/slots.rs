//! The channel slots a worker holds: how capacities hold across every worker of a database.

use std::collections::HashMap;

use queue_core::ChannelConfig;

use crate::connection::{AnyConnection, Backend};
use crate::database::Database;
use crate::run::chain;
use crate::store::Store;

/// The channel slots this worker's jobs run alone hold, shared with every worker of the
/// database: PostgreSQL advisory locks on one connection of its own, which the server frees if
/// this process dies. (A batch takes its slots in its own claim, for its transaction.)
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
    /// Slots of finished work, kept for the next unit of the same channel until the end of the
    /// dispatcher's pass: a busy channel reuses them without a round trip each way.
    spare: Vec<(String, Vec<(String, usize)>)>,
}

impl Slots {
    pub(super) fn for_database(db: &Database) -> Slots {
        let url = (!db.backend().single_writer()).then(|| db.raw_url());
        Slots { conn: None, url, backend: db.backend(), held: HashMap::new(), session: 0, spare: Vec::new() }
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
        // Spare slots of this channel first.
        let mut reused: Vec<(String, Vec<usize>)> =
            nodes.iter().map(|(name, _)| (name.clone(), Vec::new())).collect();
        let mut units = 0;
        while units < want {
            let Some(at) = self.spare.iter().position(|(spare_node, _)| spare_node == node) else { break };
            let (_, slots) = self.spare.swap_remove(at);
            for (name, slot) in slots {
                if let Some((_, list)) = reused.iter_mut().find(|(n, _)| *n == name) {
                    list.push(slot);
                }
            }
            units += 1;
        }
        if units == want {
            return reused;
        }
        let mut taken = self.acquire_new(nodes, &url, want - units);
        for (name, slots) in reused {
            match taken.iter_mut().find(|(n, _)| *n == name) {
                Some((_, list)) => list.extend(slots),
                None => taken.push((name, slots)),
            }
        }
        taken
    }

    /// Up to `want` slots of each channel of `nodes` from the database.
    fn acquire_new(
        &mut self,
        nodes: Vec<(String, usize)>,
        url: &str,
        want: usize,
    ) -> Vec<(String, Vec<usize>)> {
        if self.conn.is_none() {
            match crate::store::connect(url, self.backend) {
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

    /// Keep the slots of finished work of channel `node` for the next unit, if they are still
    /// this session's; [`Slots::flush`] gives back those not reused.
    pub(super) fn release_job(&mut self, node: &str, slots: Vec<(String, usize)>, session: u64) {
        if session == self.session && !slots.is_empty() {
            self.spare.push((node.to_owned(), slots));
        }
    }

    /// Give back the spare slots.
    pub(super) fn flush(&mut self) {
        for (_, slots) in std::mem::take(&mut self.spare) {
            self.release(slots.into_iter().map(|(name, slot)| (name, vec![slot])).collect());
        }
    }
}
