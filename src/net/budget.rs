//! A global budget of message bytes in flight, with a small share of its own for every
//! connection: each connection's first `reserve` bytes are free, only the rest is drawn from the
//! budget. Heartbeats and status reports therefore never wait on the budget, while large messages
//! past it are refused (the caller answers "try again later") instead of growing memory.
//! Bound: `budget + connections × reserve` bytes of messages, plus one read (4 KiB) per socket.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    reserve: usize,
}

/// The budget cannot spare the bytes a message needs.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("over the in-flight message budget")]
pub struct OverBudget;

impl Budget {
    pub fn new(total: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            reserve,
        })
    }

    /// Bytes no message holds at the moment (for metrics and tests).
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// An empty hold on the budget for one message.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: Arc::clone(self),
            len: 0,
            permit: None,
        }
    }
}

/// Bytes one message holds; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    len: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Grows the hold to cover `len` bytes of message, drawing on the budget beyond the reserve.
    pub fn cover(&mut self, len: usize) -> Result<(), OverBudget> {
        if len <= self.len {
            return Ok(());
        }
        let needed = len.saturating_sub(self.budget.reserve);
        let held = self
            .permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if needed > held {
            let more = u32::try_from(needed - held).map_err(|_| OverBudget)?;
            let permit = Arc::clone(&self.budget.bytes)
                .try_acquire_many_owned(more)
                .map_err(|_| OverBudget)?;
            match &mut self.permit {
                Some(existing) => existing.merge(permit),
                None => self.permit = Some(permit),
            }
        }
        self.len = len;
        Ok(())
    }

    /// Gives everything back; the hold can be grown again for the next message.
    pub fn release(&mut self) {
        self.len = 0;
        self.permit = None;
    }
}

/// A hold shared between a socket's byte stream (which grows it as bytes arrive) and the session
/// that reads messages from it (which releases it after each message).
#[derive(Debug, Clone)]
pub struct Meter(Arc<Mutex<Metered>>);

#[derive(Debug)]
struct Metered {
    held: Held,
    read: usize,
    /// The budget refused once: the socket is being closed, and what still arrives is discarded.
    tripped: bool,
}

impl Meter {
    pub fn new(budget: &Arc<Budget>) -> Self {
        Self(Arc::new(Mutex::new(Metered {
            held: budget.hold(),
            read: 0,
            tripped: false,
        })))
    }

    /// `n` more bytes arrived for the message being read.
    pub fn read(&self, n: usize) -> Result<(), OverBudget> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.read += n;
        let read = m.read;
        let covered = m.held.cover(read);
        if covered.is_err() {
            m.tripped = true;
            m.held.release();
        }
        covered
    }

    /// Whether the budget has refused this socket's message.
    pub fn tripped(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tripped
    }

    /// A message has been read whole (and taken over by its handler's own hold).
    pub fn message_done(&self) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.read = 0;
        m.held.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_free_and_the_rest_comes_from_the_budget() {
        let budget = Budget::new(1000, 100);
        let mut a = budget.hold();
        a.cover(100).unwrap();
        assert_eq!(budget.available(), 1000);
        a.cover(600).unwrap();
        assert_eq!(budget.available(), 500);
        let mut b = budget.hold();
        assert!(b.cover(700).is_err(), "600 beyond the reserve, 500 left");
        b.cover(50).unwrap();
        drop(a);
        assert_eq!(budget.available(), 1000);
        b.cover(1100).unwrap();
        assert_eq!(budget.available(), 0);
        b.release();
        assert_eq!(budget.available(), 1000);
    }

    #[test]
    fn a_meter_grows_with_the_bytes_and_resets_per_message() {
        let budget = Budget::new(1000, 100);
        let meter = Meter::new(&budget);
        for _ in 0..10 {
            meter.read(100).unwrap();
        }
        assert_eq!(budget.available(), 100);
        assert!(meter.read(101).is_err());
        assert!(meter.tripped());
        assert_eq!(budget.available(), 1000, "a refused message holds nothing");
    }
}
