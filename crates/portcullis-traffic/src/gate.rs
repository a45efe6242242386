//! Concurrency gates: at most `max_in_flight` holders at once, up to `max_queue` more
//! waiting in arrival order (tokio's semaphore is FIFO) for at most `queue_timeout`.
//! A [`Permit`] is released when dropped, so every path that ends a call gives it back.
//! A gate can be resized in place (a config reload): slots held under the old size
//! count against the new one, so the upstream never sees more than either allows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
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
    spec: Mutex<GateSpec>,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    /// Slots to retire when their holders give them back (after a shrink found them
    /// taken).
    debt: AtomicUsize,
}

/// A slot in a gate, given back when dropped (or retired, if the gate shrank).
#[derive(Debug)]
pub struct Permit {
    slot: Option<OwnedSemaphorePermit>,
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let retired = self
            .gate
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if retired {
            slot.forget();
        }
    }
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
            spec: Mutex::new(spec),
            slots: Arc::new(Semaphore::new(
                spec.max_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            queued: AtomicUsize::new(0),
            debt: AtomicUsize::new(0),
        }
    }

    /// Its limits.
    pub fn spec(&self) -> GateSpec {
        *self.spec.lock()
    }

    /// Takes new limits in place. Calls running and waiting stay; a larger
    /// `max_in_flight` lets waiting calls in at once, a smaller one retires slots as
    /// their holders give them back.
    pub fn resize(&self, spec: GateSpec) {
        let mut current = self.spec.lock();
        let old = current.max_in_flight;
        let new = spec.max_in_flight.min(Semaphore::MAX_PERMITS);
        if new > old {
            // Slots still owed from an earlier shrink are forgiven first.
            let grow = new - old;
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .unwrap_or(0);
            let add = grow - owed.min(grow);
            if add > 0 {
                self.slots.add_permits(add);
            }
        } else if new < old {
            let shrink = old - new;
            let now = self.slots.forget_permits(shrink);
            self.debt.fetch_add(shrink - now, Ordering::AcqRel);
        }
        *current = GateSpec {
            max_in_flight: new,
            ..spec
        };
    }

    /// Takes a slot: at once if one is free, else after waiting in line (if there is
    /// room in the queue) for at most `queue_timeout`. `on_queued` runs once if the
    /// call has to wait, before it does (for a queue-depth gauge, say).
    pub async fn enter(self: &Arc<Self>, on_queued: impl FnOnce()) -> Result<Entered, GateRefusal> {
        // A free slot means nobody is waiting: tokio hands released slots to waiters
        // first, so this never jumps the line.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Entered {
                permit: self.permit(slot),
                waited: None,
            });
        }
        let GateSpec {
            max_queue,
            queue_timeout,
            ..
        } = self.spec();
        let mut n = self.queued.load(Ordering::Acquire);
        loop {
            if n >= max_queue {
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
        match tokio::time::timeout(queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Entered {
                permit: self.permit(slot),
                waited: Some(start.elapsed()),
            }),
            // The semaphore is never closed; treat it as full if it ever were.
            Ok(Err(_)) => Err(GateRefusal::QueueFull),
            Err(_) => Err(GateRefusal::QueueTimeout),
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        let max = self.spec.lock().max_in_flight;
        (max + self.debt.load(Ordering::Acquire)).saturating_sub(self.slots.available_permits())
    }

    fn permit(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Permit {
        Permit {
            slot: Some(slot),
            gate: self.clone(),
        }
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

    fn sized(n: usize) -> GateSpec {
        GateSpec {
            max_in_flight: n,
            max_queue: 5,
            queue_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn growing_a_gate_lets_waiting_calls_in() {
        let g = gate(1, 5, 60_000);
        let held = g.enter(|| {}).await.expect("slot");
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move { g.enter(|| {}).await.map(|e| e.permit) })
        };
        while g.queued() < 1 {
            tokio::task::yield_now().await;
        }
        g.resize(sized(2));
        let second = waiting
            .await
            .expect("task")
            .expect("let in by the new slot");
        assert_eq!(g.in_flight(), 2);
        drop((held, second));
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test]
    async fn shrinking_a_busy_gate_retires_slots_as_they_come_back() {
        let g = gate(3, 0, 60_000);
        let a = g.enter(|| {}).await.expect("slot");
        let b = g.enter(|| {}).await.expect("slot");
        let c = g.enter(|| {}).await.expect("slot");
        g.resize(GateSpec {
            max_queue: 0,
            ..sized(1)
        });
        assert_eq!(g.in_flight(), 3, "the running calls go on");
        drop(a);
        assert_eq!(
            g.enter(|| {}).await.err(),
            Some(GateRefusal::QueueFull),
            "retired"
        );
        drop(b);
        assert_eq!(
            g.enter(|| {}).await.err(),
            Some(GateRefusal::QueueFull),
            "retired"
        );
        drop(c);
        let d = g.enter(|| {}).await.expect("the one slot of the new size");
        assert_eq!(g.enter(|| {}).await.err(), Some(GateRefusal::QueueFull));
        drop(d);
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_shrink_then_a_grow_before_slots_come_back_counts_right() {
        let g = gate(3, 0, 60_000);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(g.enter(|| {}).await.expect("slot"));
        }
        g.resize(GateSpec {
            max_queue: 0,
            ..sized(1)
        }); // two slots owed
        g.resize(GateSpec {
            max_queue: 0,
            ..sized(2)
        }); // one of them forgiven
        assert_eq!(g.in_flight(), 3);
        drop(held.pop()); // retired: the one still owed
        assert_eq!(g.in_flight(), 2);
        assert_eq!(
            g.enter(|| {}).await.err(),
            Some(GateRefusal::QueueFull),
            "2 of 2 run"
        );
        drop(held.pop());
        let again = g.enter(|| {}).await.expect("a slot came back");
        assert_eq!(g.enter(|| {}).await.err(), Some(GateRefusal::QueueFull));
        drop((again, held));
        assert_eq!(g.in_flight(), 0);
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
