//! Coalescing: when several clients ask the same question at once, one query goes upstream
//! and every one of them gets its answer. A burst for one name (a page full of links to one
//! host, many processes starting together) then costs one upstream round trip, not N.
//!
//! The first asker becomes the leader and resolves; later ones follow and wait for the
//! leader's result. If the leader is dropped before it finishes (its task was cancelled), the
//! followers see the flight end without a result and resolve on their own.

use crate::common::lock;
use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

/// Where followers wait: `None` until the leader publishes its result.
type Waiting<T> = watch::Receiver<Option<T>>;

/// The flights in progress, by key.
pub(crate) struct Coalescer<T> {
    flights: Mutex<HashMap<Box<[u8]>, Waiting<T>>>,
}

/// What a caller of [`Coalescer::join`] must do.
pub(crate) enum Role<'a, T> {
    /// Resolve, then hand the result to [`Flight::finish`].
    Leader(Flight<'a, T>),
    /// Wait for the leader with [`follow`].
    Follower(Waiting<T>),
}

/// A leader's duty: finishing (or being dropped) ends the flight.
pub(crate) struct Flight<'a, T> {
    coalescer: &'a Coalescer<T>,
    key: Box<[u8]>,
    result: watch::Sender<Option<T>>,
    /// Set once removed from the map, so a later flight for the same key is left alone.
    ended: bool,
}

impl<T: Clone> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Coalescer<T> {
    /// Joins the flight for `key`, starting it if there is none.
    pub(crate) fn join(&self, key: &[u8]) -> Role<'_, T> {
        let mut flights = lock::lock(&self.flights);
        if let Some(receiver) = flights.get(key) {
            return Role::Follower(receiver.clone());
        }
        let (result, receiver) = watch::channel(None);
        flights.insert(key.into(), receiver);
        Role::Leader(Flight {
            coalescer: self,
            key: key.into(),
            result,
            ended: false,
        })
    }

    /// Flights in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock::lock(&self.flights).len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Flight<'_, T> {
    /// Hands `value` to every follower and ends the flight.
    pub(crate) fn finish(mut self, value: T) {
        // Nobody may join a finished flight: remove it before publishing. Its receiver in the
        // map is gone with it, so any left are followers'; with none (most queries), waking
        // nobody is skipped.
        self.end();
        if self.result.receiver_count() > 0 {
            self.result.send_replace(Some(value));
        }
    }

    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let mut flights = lock::lock(&self.coalescer.flights);
        flights.remove(&self.key);
    }
}

impl<T> Drop for Flight<'_, T> {
    fn drop(&mut self) {
        self.end();
    }
}

/// The leader's result, or `None` when the leader gave up or `deadline` passed first.
pub(crate) async fn follow<T: Clone>(mut receiver: Waiting<T>, deadline: Instant) -> Option<T> {
    let waited = tokio::time::timeout_at(deadline, receiver.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(value)) => value.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let coalescer = Coalescer::<u32>::default();
        let Role::Leader(flight) = coalescer.join(b"k") else {
            panic!("first caller must lead");
        };
        let Role::Follower(receiver) = coalescer.join(b"k") else {
            panic!("second caller must follow");
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiting = tokio::spawn(follow(receiver, deadline));
        flight.finish(7);
        assert_eq!(waiting.await.ok().flatten(), Some(7));
        assert!(coalescer.is_empty(), "a finished flight is removed");
        assert!(matches!(coalescer.join(b"k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let coalescer = Coalescer::<u32>::default();
        let leader = coalescer.join(b"k");
        let Role::Follower(receiver) = coalescer.join(b"k") else {
            panic!("second caller must follow");
        };
        drop(leader);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(follow(receiver, deadline).await, None);
        assert!(coalescer.is_empty());
    }

    #[tokio::test]
    async fn a_finished_leader_leaves_the_next_flight_alone() {
        let coalescer = Coalescer::<u32>::default();
        let Role::Leader(first) = coalescer.join(b"k") else {
            panic!("first caller must lead");
        };
        first.finish(1);
        let _second = coalescer.join(b"k");
        assert_eq!(coalescer.len(), 1, "the new flight stays registered");
    }

    #[tokio::test]
    async fn different_keys_fly_separately() {
        let coalescer = Coalescer::<u32>::default();
        let _a = coalescer.join(b"a");
        assert!(matches!(coalescer.join(b"b"), Role::Leader(_)));
    }
}
