//! Who gets the backend next: fair queuing by service received.
//!
//! Every session with long work (a job, see [`super::jobs`]) asks for turns on the backend,
//! one at a time, and is charged the device time each turn took. The next turn goes to the
//! waiting session that has received the least service so far; a session that comes back after
//! a pause starts level with the least served of the others, so it cannot bank credit while
//! idle. Over any stretch where `n` sessions wait, each gets about `1/n` of the device, and a
//! session that asks waits at most one turn of each other waiting session.
//!
//! A turn lasts a quantum ([`QUANTUM`](super::jobs::QUANTUM)) of service while its session
//! keeps asking. Light requests (PING, transfers, STATS...) are not scheduled here: the engine
//! runs them between any two steps of a job (the job steps aside for them and asks again), so
//! they wait at most one step; the turn then goes on where it stopped, so light traffic does
//! not turn every step into a change of job.
//!
//! The scheduler is pure (no clock, no threads): service is whatever the caller charges, so
//! tests drive it on a virtual clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::messages::ConnId;

/// Fair queuing over the sessions that want a turn.
#[derive(Debug)]
pub(crate) struct Scheduler {
    /// Service received (nanoseconds of device time) by each session that has asked.
    served: HashMap<ConnId, u64>,
    /// Sessions waiting for a turn, in the order they asked.
    waiting: VecDeque<ConnId>,
    /// The service of the last session picked: where a returning session starts.
    floor: u64,
    /// The session whose turn runs, and the service it has had in this turn.
    turn: Option<(ConnId, u64)>,
    /// How long a turn lasts (ns) while its session keeps asking.
    quantum: u64,
}

impl Scheduler {
    /// `conn` wants a turn. Asking twice before being picked counts once.
    pub(crate) fn want(&mut self, conn: ConnId) {
        if self.waiting.contains(&conn) {
            return;
        }
        let floor = self.floor;
        let served = self.served.entry(conn).or_insert(floor);
        *served = (*served).max(floor);
        self.waiting.push_back(conn);
    }

    /// A scheduler whose turns last `quantum` of service.
    pub(crate) fn new(quantum: Duration) -> Self {
        let quantum = u64::try_from(quantum.as_nanos()).unwrap_or(u64::MAX);
        Self { served: HashMap::new(), waiting: VecDeque::new(), floor: 0, turn: None, quantum }
    }

    /// The waiting session to run next, now no longer waiting: the session whose turn runs, if
    /// it asks again before the turn has lasted the quantum (it stepped aside for light
    /// requests); otherwise the least served (the earliest asker among equals), whose turn
    /// starts.
    pub(crate) fn next(&mut self) -> Option<ConnId> {
        if let Some((conn, had)) = self.turn
            && had < self.quantum
            && let Some(at) = self.waiting.iter().position(|&c| c == conn)
        {
            self.waiting.remove(at);
            return Some(conn);
        }
        let (at, _) = self
            .waiting
            .iter()
            .enumerate()
            .min_by_key(|&(i, conn)| (self.served.get(conn).copied().unwrap_or(0), i))?;
        let conn = self.waiting.remove(at)?;
        self.floor = self.floor.max(self.served.get(&conn).copied().unwrap_or(0));
        self.turn = Some((conn, 0));
        Some(conn)
    }

    /// Charges `conn` for a turn of `nanos`.
    pub(crate) fn charge(&mut self, conn: ConnId, nanos: u64) {
        if let Some(s) = self.served.get_mut(&conn) {
            *s = s.saturating_add(nanos.max(1));
        }
        if let Some((holder, had)) = &mut self.turn
            && *holder == conn
        {
            *had = had.saturating_add(nanos.max(1));
        }
    }

    /// Forgets `conn` (its job ended).
    pub(crate) fn forget(&mut self, conn: ConnId) {
        self.served.remove(&conn);
        self.waiting.retain(|&c| c != conn);
        if self.turn.is_some_and(|(holder, _)| holder == conn) {
            self.turn = None;
        }
    }

    /// Sessions waiting for a turn.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session on the virtual clock: turns of `step` ns each, until `work` ns are done.
    struct Sim {
        conn: ConnId,
        step: u64,
        left: u64,
        done_at: Option<u64>,
        served: u64,
    }

    /// Runs the sessions that join at their `start` (virtual ns) until all are done, with turns
    /// of `quantum` ns: each step a session takes is a turn that steps aside (as for a light
    /// request) and asks again. Returns the longest wait any session had between asking and
    /// being served, and how often the backend went from one session to another.
    fn run_with(sims: &mut [Sim], starts: &[u64], quantum: u64) -> (HashMap<ConnId, u64>, usize) {
        let mut s = Scheduler::new(Duration::from_nanos(quantum));
        let mut last = None;
        let mut changes = 0;
        let mut now = 0u64;
        let mut asked_at: HashMap<ConnId, u64> = HashMap::new();
        let mut worst: HashMap<ConnId, u64> = HashMap::new();
        let mut joined = vec![false; sims.len()];
        loop {
            for (i, sim) in sims.iter().enumerate() {
                if !joined[i] && starts[i] <= now {
                    joined[i] = true;
                    s.want(sim.conn);
                    asked_at.insert(sim.conn, now);
                }
            }
            let Some(conn) = s.next() else {
                // Idle: jump to the next arrival, or stop.
                match starts.iter().zip(&joined).filter(|(_, j)| !**j).map(|(t, _)| *t).min() {
                    Some(t) => {
                        now = t;
                        continue;
                    }
                    None => break,
                }
            };
            if last.is_some_and(|l| l != conn) {
                changes += 1;
            }
            last = Some(conn);
            let wait = now - asked_at[&conn];
            let w = worst.entry(conn).or_default();
            *w = (*w).max(wait);
            let sim = sims.iter_mut().find(|x| x.conn == conn).expect("known conn");
            let step = sim.step.min(sim.left);
            now += step;
            sim.left -= step;
            sim.served += step;
            s.charge(conn, step);
            if sim.left == 0 {
                sim.done_at = Some(now);
                s.forget(conn);
            } else {
                s.want(conn);
                asked_at.insert(conn, now);
            }
        }
        (worst, changes)
    }

    /// [`run_with`] with one step per turn.
    fn run(sims: &mut [Sim], starts: &[u64]) -> HashMap<ConnId, u64> {
        run_with(sims, starts, 1).0
    }

    fn sim(conn: ConnId, step: u64, work: u64) -> Sim {
        Sim { conn, step, left: work, done_at: None, served: 0 }
    }

    #[test]
    fn equal_sessions_share_equally_and_wait_one_turn_each() {
        let mut sims = [sim(1, 2_000, 1_000_000), sim(2, 2_000, 1_000_000), sim(3, 2_000, 1_000_000)];
        let worst = run(&mut sims, &[0, 0, 0]);
        // Round robin: nobody waits longer than the other two sessions' turns.
        for conn in 1..=3 {
            assert!(worst[&conn] <= 2 * 2_000, "session {conn} waited {} ns", worst[&conn]);
        }
        // All finish within one round of each other.
        let done: Vec<u64> = sims.iter().map(|s| s.done_at.expect("done")).collect();
        let spread = done.iter().max().expect("some") - done.iter().min().expect("some");
        assert!(spread <= 2 * 2_000, "finish times {done:?}");
    }

    #[test]
    fn a_light_session_waits_at_most_one_turn_of_each_heavy_one() {
        // Two heavy sessions with 2 ms turns, then a light one with 50 µs of work joins late.
        let mut sims =
            [sim(1, 2_000_000, 200_000_000), sim(2, 2_000_000, 200_000_000), sim(3, 50_000, 50_000)];
        let worst = run(&mut sims, &[0, 0, 77_000_000]);
        assert!(worst[&3] <= 2 * 2_000_000, "the light session waited {} ns", worst[&3]);
        let light_done = sims[2].done_at.expect("light done");
        assert!(light_done <= 77_000_000 + 2 * 2_000_000 + 50_000, "light done at {light_done}");
    }

    #[test]
    fn short_turns_get_the_same_share_as_long_ones() {
        // One session takes 4 ms turns, the other 0.5 ms turns: by service, not by turns.
        let mut sims = [sim(1, 4_000_000, 400_000_000), sim(2, 500_000, 400_000_000)];
        run(&mut sims, &[0, 0]);
        let (a, b) = (sims[0].done_at.expect("a"), sims[1].done_at.expect("b"));
        let gap = a.abs_diff(b);
        assert!(gap <= 4_000_000, "finish times differ by {gap} ns: {a} vs {b}");
    }

    #[test]
    fn an_idle_session_cannot_bank_credit() {
        // Session 2 joins after session 1 has run alone for 100 ms: it must not then get the
        // device for 100 ms straight.
        let mut sims = [sim(1, 1_000_000, 300_000_000), sim(2, 1_000_000, 100_000_000)];
        let worst = run(&mut sims, &[0, 100_000_000]);
        assert!(worst[&1] <= 1_000_000, "session 1 waited {} ns", worst[&1]);
    }

    #[test]
    fn a_turn_outlasts_the_steps_it_steps_aside_between() {
        // Two heavy sessions whose 1 ms steps are each cut by a light request: with 8 ms turns
        // the backend changes hands once per 8 steps, not after every step.
        let mut sims = [sim(1, 1_000_000, 400_000_000), sim(2, 1_000_000, 400_000_000)];
        let (worst, changes) = run_with(&mut sims, &[0, 0], 8_000_000);
        assert!(changes <= 800 / 8 + 1, "{changes} changes of session in 800 steps");
        // Still fair: nobody waits longer than one turn of the other, and both end together.
        for conn in 1..=2 {
            assert!(worst[&conn] <= 8_000_000, "session {conn} waited {} ns", worst[&conn]);
        }
        let (a, b) = (sims[0].done_at.expect("a"), sims[1].done_at.expect("b"));
        assert!(a.abs_diff(b) <= 8_000_000, "finish times {a} and {b}");
        // One step per turn: a change after every step.
        let mut sims = [sim(1, 1_000_000, 400_000_000), sim(2, 1_000_000, 400_000_000)];
        let (_, changes) = run_with(&mut sims, &[0, 0], 1);
        assert!(changes >= 799, "{changes} changes with one-step turns");
    }

    #[test]
    fn a_turn_ends_when_its_session_stops_asking() {
        let mut s = Scheduler::new(Duration::from_millis(8));
        s.want(1);
        s.want(2);
        assert_eq!(s.next(), Some(1));
        s.charge(1, 1_000_000);
        // Session 1 did not ask again (its call ended): session 2's turn starts.
        assert_eq!(s.next(), Some(2));
        s.charge(2, 1_000_000);
        s.want(1);
        s.want(2);
        // Session 2's turn goes on although session 1 is less served and asked first.
        assert_eq!(s.next(), Some(2));
        s.charge(2, 7_000_000);
        s.want(2);
        // Session 2's turn has lasted the quantum: the least served goes next.
        assert_eq!(s.next(), Some(1));
        s.forget(1);
        assert_eq!(s.next(), Some(2));
        assert_eq!(s.next(), None);
    }

    #[test]
    fn want_is_idempotent_and_forget_removes() {
        let mut s = Scheduler::new(Duration::from_nanos(1));
        s.want(5);
        s.want(5);
        assert_eq!(s.waiting(), 1);
        s.want(6);
        s.forget(5);
        assert_eq!(s.next(), Some(6));
        assert_eq!(s.next(), None);
    }
}
