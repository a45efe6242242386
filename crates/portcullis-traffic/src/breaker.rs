//! Circuit breakers, one per upstream endpoint: closed while the endpoint answers;
//! opened by consecutive failures or by an error rate over a window; after a cool-down,
//! half-open, letting a few probe calls through whose outcome closes or re-opens it.
//! Time is passed in by the caller, so the state machine is tested without waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSpec {
    /// Failures in a row that open it.
    pub consecutive_failures: u32,
    /// A share of failed calls (0..=1) that opens it, once `min_calls` calls were seen
    /// in the current window. `None`: only consecutive failures count.
    pub error_rate: Option<f64>,
    /// Calls a window needs before its error rate counts.
    pub min_calls: u32,
    /// How long one counting window lasts.
    pub window: Duration,
    /// How long it stays open before probing.
    pub cool_down: Duration,
    /// Probe calls let through at once while half-open; that many successes close it.
    pub half_open_calls: u32,
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls pass.
    HalfOpen,
}

impl BreakerState {
    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct State {
    phase: BreakerState,
    /// While open: when probing may start.
    open_until: Instant,
    consecutive: u32,
    window_start: Instant,
    calls: u32,
    failures: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Bumped each time it opens, so probes of an earlier half-open spell are ignored.
    generation: u64,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    state: Mutex<State>,
}

/// A call the breaker let through. Report its outcome with [`Ticket::succeeded`] or
/// [`Ticket::failed`]; dropped without one (the client left), it counts as neither.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    generation: u64,
    done: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: BreakerSpec, now: Instant) -> Breaker {
        Breaker {
            spec,
            state: Mutex::new(State {
                phase: BreakerState::Closed,
                open_until: now,
                consecutive: 0,
                window_start: now,
                calls: 0,
                failures: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                generation: 0,
            }),
        }
    }

    /// Its spec.
    pub fn spec(&self) -> BreakerSpec {
        self.spec
    }

    /// Where it stands at `now` (an open breaker whose cool-down is over reads as
    /// half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        let s = self.state.lock();
        match s.phase {
            BreakerState::Open if now >= s.open_until => BreakerState::HalfOpen,
            p => p,
        }
    }

    /// Whether a call may go through now: a ticket, or `Err` with the time left until
    /// probing starts (zero while half-open with every probe taken).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Ticket, Duration> {
        let mut s = self.state.lock();
        if s.phase == BreakerState::Open {
            if now < s.open_until {
                return Err(s.open_until - now);
            }
            s.phase = BreakerState::HalfOpen;
            s.probes_in_flight = 0;
            s.probe_successes = 0;
        }
        let probe = s.phase == BreakerState::HalfOpen;
        if probe {
            if s.probes_in_flight >= self.spec.half_open_calls {
                return Err(Duration::ZERO);
            }
            s.probes_in_flight += 1;
        }
        Ok(Ticket {
            breaker: self.clone(),
            probe,
            generation: s.generation,
            done: false,
        })
    }

    /// Whether [`Breaker::admit`] would let a call through now (without taking a probe
    /// place): closed, or half-open (or due to be) with a probe place free.
    pub fn would_admit(&self, now: Instant) -> bool {
        let s = self.state.lock();
        match s.phase {
            BreakerState::Closed => true,
            BreakerState::Open => now >= s.open_until,
            BreakerState::HalfOpen => s.probes_in_flight < self.spec.half_open_calls,
        }
    }

    fn record(
        &self,
        probe: bool,
        generation: u64,
        ok: Option<bool>,
        now: Instant,
    ) -> Option<BreakerState> {
        let mut s = self.state.lock();
        let before = s.phase;
        if probe {
            if s.phase != BreakerState::HalfOpen || s.generation != generation {
                // Stale: the breaker moved on (opened again) while this probe ran.
                return None;
            }
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
            match ok {
                Some(true) => {
                    s.probe_successes += 1;
                    if s.probe_successes >= self.spec.half_open_calls {
                        s.phase = BreakerState::Closed;
                        s.consecutive = 0;
                        s.window_start = now;
                        s.calls = 0;
                        s.failures = 0;
                    }
                }
                Some(false) => self.open(&mut s, now),
                None => {}
            }
        } else if s.phase == BreakerState::Closed {
            let ok = ok?;
            if now.duration_since(s.window_start) >= self.spec.window {
                s.window_start = now;
                s.calls = 0;
                s.failures = 0;
            }
            s.calls += 1;
            if ok {
                s.consecutive = 0;
            } else {
                s.consecutive += 1;
                s.failures += 1;
                let by_rate = self.spec.error_rate.is_some_and(|rate| {
                    s.calls >= self.spec.min_calls
                        && f64::from(s.failures) >= rate * f64::from(s.calls)
                });
                if s.consecutive >= self.spec.consecutive_failures || by_rate {
                    self.open(&mut s, now);
                }
            }
        }
        (s.phase != before).then_some(s.phase)
    }

    fn open(&self, s: &mut State, now: Instant) {
        s.phase = BreakerState::Open;
        s.open_until = now + self.spec.cool_down;
        s.consecutive = 0;
        s.calls = 0;
        s.failures = 0;
        s.probes_in_flight = 0;
        s.probe_successes = 0;
        s.generation += 1;
    }
}

impl Ticket {
    /// The endpoint answered; returns the state the breaker moved to, if it moved.
    pub fn succeeded(mut self, now: Instant) -> Option<BreakerState> {
        self.done = true;
        self.breaker
            .record(self.probe, self.generation, Some(true), now)
    }

    /// The endpoint failed; returns the state the breaker moved to, if it moved.
    pub fn failed(mut self, now: Instant) -> Option<BreakerState> {
        self.done = true;
        self.breaker
            .record(self.probe, self.generation, Some(false), now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // Neither outcome: a probe's place is given back.
            self.breaker
                .record(self.probe, self.generation, None, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: 3,
            error_rate: Some(0.5),
            min_calls: 10,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            half_open_calls: 2,
        }
    }

    fn fail(b: &Arc<Breaker>, now: Instant) -> Option<BreakerState> {
        b.admit(now).expect("admitted").failed(now)
    }

    fn succeed(b: &Arc<Breaker>, now: Instant) -> Option<BreakerState> {
        b.admit(now).expect("admitted").succeeded(now)
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        assert_eq!(fail(&b, t), None);
        assert_eq!(fail(&b, t), None);
        assert_eq!(succeed(&b, t), None, "the run is broken");
        assert_eq!(fail(&b, t), None);
        assert_eq!(fail(&b, t), None);
        assert_eq!(fail(&b, t), Some(BreakerState::Open));
        assert_eq!(b.admit(t).err(), Some(Duration::from_secs(5)));
        assert_eq!(
            b.admit(t + Duration::from_secs(2)).err(),
            Some(Duration::from_secs(3)),
            "fails fast with the time left"
        );
    }

    #[test]
    fn an_error_rate_opens_it_once_the_window_has_enough_calls() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        // Alternating: never 3 in a row, but half the calls fail.
        for i in 0..9 {
            let moved = if i % 2 == 0 {
                fail(&b, t)
            } else {
                succeed(&b, t)
            };
            assert_eq!(moved, None, "call {i}: under min_calls");
        }
        assert_eq!(fail(&b, t), Some(BreakerState::Open), "10 calls, 5 failed");
    }

    #[test]
    fn a_new_window_forgets_the_old_calls() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        for _ in 0..4 {
            fail(&b, t);
            succeed(&b, t);
        }
        let later = t + Duration::from_secs(11);
        for _ in 0..4 {
            assert_eq!(fail(&b, later), None);
            assert_eq!(succeed(&b, later), None);
        }
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        for _ in 0..3 {
            fail(&b, t);
        }
        let probing = t + Duration::from_secs(5);
        assert_eq!(b.state(probing), BreakerState::HalfOpen);
        let p1 = b.admit(probing).expect("probe 1");
        let p2 = b.admit(probing).expect("probe 2");
        assert_eq!(
            b.admit(probing).err(),
            Some(Duration::ZERO),
            "two probes at once"
        );
        assert_eq!(
            p1.failed(probing),
            Some(BreakerState::Open),
            "a failed probe re-opens"
        );
        assert_eq!(p2.succeeded(probing), None, "a stale probe changes nothing");
        assert!(b.admit(probing).is_err());

        let again = probing + Duration::from_secs(5);
        let p1 = b.admit(again).expect("probe");
        let p2 = b.admit(again).expect("probe");
        assert_eq!(p1.succeeded(again), None);
        assert_eq!(
            p2.succeeded(again),
            Some(BreakerState::Closed),
            "two successes close it"
        );
        assert_eq!(b.state(again), BreakerState::Closed);
    }

    #[test]
    fn a_probe_from_an_earlier_half_open_spell_counts_for_nothing() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        for _ in 0..3 {
            fail(&b, t);
        }
        let first = t + Duration::from_secs(5);
        let p1 = b.admit(first).expect("probe 1");
        let p2 = b.admit(first).expect("probe 2");
        assert_eq!(p2.failed(first), Some(BreakerState::Open));
        let second = first + Duration::from_secs(5);
        let p3 = b.admit(second).expect("probe of the new spell");
        assert!(b.would_admit(second), "one place left");
        assert_eq!(p1.succeeded(second), None, "the old probe is ignored");
        assert!(b.would_admit(second), "and took no place");
        assert_eq!(p3.succeeded(second), None, "one success of two needed");
        assert_eq!(b.state(second), BreakerState::HalfOpen);
    }

    #[test]
    fn a_probe_dropped_without_an_outcome_gives_its_place_back() {
        let t = Instant::now();
        let b = Arc::new(Breaker::new(spec(), t));
        for _ in 0..3 {
            fail(&b, t);
        }
        let probing = t + Duration::from_secs(5);
        let p1 = b.admit(probing).expect("probe");
        let _p2 = b.admit(probing).expect("probe");
        drop(p1);
        assert!(
            b.admit(probing).is_ok(),
            "the dropped probe's place is free again"
        );
    }
}
