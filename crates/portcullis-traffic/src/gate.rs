//! Concurrency gates: at most `max_in_flight` holders at once, up to `max_queue` more
//! waiting in arrival order (tokio's semaphore is FIFO) for at most `queue_timeout`.
//! A [`Permit`] is released when dropped, so every path that ends a call gives it back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A gate's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateSpec {
    /// Calls running at once.
    pub max_in_flight: usize,
    /// Calls waiting for a free slot; past it, a call is refused at once.
    pub max_queue: usize,
    /// The longest a call waits in the queue.
    pub queue_timeout: Duration,
}

/// Why a gate turned a call away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefusal {
    /// Every slot is taken and the queue is full.
    QueueFull,
    /// The call waited `queue_timeout` without a slot coming free.
    QueueTimeout,
}

/// A gate: a semaphore plus a bounded, timed queue.
#[derive(Debug)]
pub struct Gate {
    spec: GateSpec,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// A slot in a gate, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

/// A gate entered: the permit, and how long the call queued (`None`: not at all).
#[derive(Debug)]
pub struct Entered {
    /// Hold it until the call's answer has ended.
    pub permit: Permit,
    /// Time spent in the queue.
    pub waited: Option<Duration>,
}

/// Takes a queue place back when the waiting ends, however it ends.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// A gate with every slot free.
    pub fn new(spec: GateSpec) -> Gate {
        Gate {
            spec,
            slots: Arc::new(Semaphore::new(
                spec.max_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            queued: AtomicUsize::new(0),
        }
    }

    /// Its limits.
    pub fn spec(&self) -> GateSpec {
        self.spec
    }

    /// Takes a slot: at once if one is free, else after waiting in line (if there is
    /// room in the queue) for at most `queue_timeout`. `on_queued` runs once if the
    /// call has to wait, before it does (for a queue-depth gauge, say).
    pub async fn enter(&self, on_queued: impl FnOnce()) -> Result<Entered, GateRefusal> {
        // A free slot means nobody is waiting: tokio hands released slots to waiters
        // first, so this never jumps the line.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Entered {
                permit: Permit { _slot: slot },
                waited: None,
            });
        }
        let mut n = self.queued.load(Ordering::Acquire);
        loop {
            if n >= self.spec.max_queue {
                return Err(GateRefusal::QueueFull);
            }
            match self
                .queued
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let _place = QueuePlace(&self.queued);
        on_queued();
        let start = Instant::now();
        match tokio::time::timeout(self.spec.queue_timeout, self.slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => Ok(Entered {
                permit: Permit { _slot: slot },
                waited: Some(start.elapsed()),
            }),
            // The semaphore is never closed; treat it as full if it ever were.
            Ok(Err(_)) => Err(GateRefusal::QueueFull),
            Err(_) => Err(GateRefusal::QueueTimeout),
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.spec
            .max_in_flight
            .saturating_sub(self.slots.available_permits())
    }

    /// Calls waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, max_queue: usize, ms: u64) -> Arc<Gate> {
        Arc::new(Gate::new(GateSpec {
            max_in_flight,
            max_queue,
            queue_timeout: Duration::from_millis(ms),
        }))
    }

    #[tokio::test]
    async fn two_run_three_wait_the_rest_are_refused_at_once() {
        let g = gate(2, 3, 60_000);
        let a = g.enter(|| {}).await.expect("slot");
        let b = g.enter(|| {}).await.expect("slot");
        assert!(a.waited.is_none() && b.waited.is_none());
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let g = g.clone();
            waiting.push(tokio::spawn(async move {
                g.enter(|| {}).await.map(|e| e.waited.is_some())
            }));
        }
        while g.queued() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(g.enter(|| {}).await.err(), Some(GateRefusal::QueueFull));
        assert_eq!(g.enter(|| {}).await.err(), Some(GateRefusal::QueueFull));
        assert_eq!(g.in_flight(), 2);
        drop(a);
        drop(b);
        for w in waiting {
            assert_eq!(w.await.expect("task"), Ok(true), "queued, then served");
        }
        assert_eq!((g.in_flight(), g.queued()), (0, 0), "every slot came back");
    }

    #[tokio::test]
    async fn the_queue_timeout_fires_and_gives_the_place_back() {
        let g = gate(1, 1, 20);
        let held = g.enter(|| {}).await.expect("slot");
        assert_eq!(g.enter(|| {}).await.err(), Some(GateRefusal::QueueTimeout));
        assert_eq!(g.queued(), 0);
        drop(held);
        assert!(g.enter(|| {}).await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_dropped_mid_queue_frees_its_place_and_takes_no_slot() {
        let g = gate(1, 1, 60_000);
        let held = g.enter(|| {}).await.expect("slot");
        let w = {
            let g = g.clone();
            tokio::spawn(async move { g.enter(|| {}).await.map(|_| ()) })
        };
        while g.queued() < 1 {
            tokio::task::yield_now().await;
        }
        w.abort();
        let _ = w.await;
        assert_eq!(g.queued(), 0);
        drop(held);
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let g = gate(1, 10, 60_000);
        let held = g.enter(|| {}).await.expect("slot");
        let order = Arc::new(arrival::Order::default());
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (gate, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let e = gate.enter(|| {}).await.expect("served");
                order.push(i);
                drop(e);
            }));
            while g.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(order.take(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_gate_without_a_queue_refuses_at_once() {
        let g = gate(1, 0, 60_000);
        let _held = g.enter(|| {}).await.expect("slot");
        let mut queued = false;
        assert_eq!(
            g.enter(|| queued = true).await.err(),
            Some(GateRefusal::QueueFull)
        );
        assert!(!queued);
    }

    mod arrival {
        #[derive(Default)]
        pub struct Order(std::sync::Mutex<Vec<usize>>);
        impl Order {
            pub fn push(&self, i: usize) {
                self.0.lock().expect("lock").push(i);
            }
            pub fn take(&self) -> Vec<usize> {
                std::mem::take(&mut *self.0.lock().expect("lock"))
            }
        }
    }
}
