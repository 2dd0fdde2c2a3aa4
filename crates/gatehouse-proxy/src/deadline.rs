//! A deadline that moves often and rarely expires, for the hot path.
//!
//! Every request moves a connection's deadlines (the client's idle and header
//! waits, the backend's response wait). A fresh `tokio::time::timeout` per
//! request registers and deregisters a timer-wheel entry each time, under the
//! driver's lock. Here the timer stays registered: moving the deadline later
//! only records it, and when the timer fires before the recorded deadline it
//! re-arms itself once. So a deadline costs a clock read per request, and a
//! timer-wheel update only when it is moved earlier or fires.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct Deadline {
    /// When the wait ends.
    at: Instant,
    /// When the timer fires (at or before `at`, or stale and already fired).
    armed: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Deadline {
        Deadline {
            at,
            armed: at,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    pub(crate) fn set(&mut self, at: Instant) {
        self.at = at;
    }

    /// Ready once the deadline has passed; otherwise the task is woken by then.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed > self.at {
            self.armed = self.at;
            self.timer.as_mut().reset(self.at);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            self.armed = self.at;
            self.timer.as_mut().reset(self.at);
        }
    }
}
