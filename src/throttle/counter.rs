//! The counting, in plain Rust: one identity's failures in a sliding window, its lock-out with
//! growing waits, and the fixed-size, set-associative table of such counters with eviction.
//! No PostgreSQL here: `table.rs` puts these slots in shared (or backend) memory.

/// Microseconds, as PostgreSQL's `TimestampTz` counts them.
pub type Micros = i64;

pub const SECOND: Micros = 1_000_000;
/// After a day without a failure an identity's lock-out history is forgotten: its next
/// lock-out is a first one again.
const HISTORY: Micros = 86_400 * SECOND;

/// Slots per bucket: an identity lives in one bucket, found by its hash, and only competes for
/// room with the identities that share it.
pub const WAYS: usize = 8;

/// What is counted about whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Customer = 1,
    Client = 2,
    Key = 3,
    Address = 4,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "customer" => Some(Kind::Customer),
            "client" => Some(Kind::Client),
            "key" => Some(Kind::Key),
            "address" => Some(Kind::Address),
            _ => None,
        }
    }

    pub fn from_u8(b: u8) -> Option<Kind> {
        [Kind::Customer, Kind::Client, Kind::Key, Kind::Address]
            .into_iter()
            .find(|k| *k as u8 == b)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Client => "client",
            Kind::Key => "key",
            Kind::Address => "address",
        }
    }
}

/// When an identity gets locked out, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// failures within `window` that lock the identity out
    pub threshold: u32,
    pub window: Micros,
    /// the first lock-out's length; each further one (within a day) doubles it ...
    pub period: Micros,
    /// ... up to this
    pub max_period: Micros,
}

impl Policy {
    /// The length of the lock-out number `strikes` (0 = the first).
    pub fn period_for(&self, strikes: u8) -> Micros {
        let grown = self.period.saturating_mul(1_i64 << strikes.min(30));
        grown.min(self.max_period.max(self.period))
    }
}

/// One identity's counter. All zero is an empty slot; the layout is fixed because it lives in
/// shared memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// keyed hash of tenant, kind and identity; all zero: empty
    pub key: [u8; 16],
    pub tenant: [u8; 16],
    pub kind: u8,
    /// lock-outs so far (growing waits)
    pub strikes: u8,
    _pad: [u8; 2],
    /// failures in the current and the previous window
    pub current: u32,
    pub previous: u32,
    /// attempts refused while locked out, reported when the lock-out ends
    pub refused: u32,
    /// the failures that led to the current lock-out
    pub failures: u32,
    pub window_start: Micros,
    /// 0: not locked; in the past: a lock-out that ended and is not yet reported
    pub locked_until: Micros,
    pub locked_at: Micros,
    pub last_seen: Micros,
}

/// What a failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// counted; the estimated failures in the window now
    Counted(u32),
    /// this failure crossed the threshold: locked out until then
    LockedNow { until: Micros, failures: u32 },
    /// already locked out (a race with the check): refused, summed up
    WhileLocked(Micros),
}

/// A lock-out that ended (or was lifted), to report once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub key: [u8; 16],
    pub tenant: [u8; 16],
    pub kind: u8,
    pub locked_at: Micros,
    pub until: Micros,
    pub refused: u32,
}

impl Slot {
    pub fn is_empty(&self) -> bool {
        self.key == [0; 16]
    }

    pub fn new(key: [u8; 16], tenant: [u8; 16], kind: Kind, now: Micros) -> Slot {
        Slot {
            key,
            tenant,
            kind: kind as u8,
            window_start: now,
            last_seen: now,
            ..Slot::default()
        }
    }

    /// Locked out at `now`: until when.
    pub fn locked(&self, now: Micros) -> Option<Micros> {
        (self.locked_until > now).then_some(self.locked_until)
    }

    /// A lock-out that is over and not yet reported: take it (the slot forgets it).
    pub fn take_ended(&mut self, now: Micros) -> Option<Ended> {
        if self.locked_until == 0 || self.locked_until > now {
            return None;
        }
        let ended = self.ended();
        self.locked_until = 0;
        self.refused = 0;
        Some(ended)
    }

    /// Lifts the lock-out now (an admin's unlock), with the failures counted so far.
    pub fn lift(&mut self, now: Micros) -> Ended {
        let mut ended = self.ended();
        ended.until = ended.until.min(now);
        self.locked_until = 0;
        self.refused = 0;
        self.current = 0;
        self.previous = 0;
        self.strikes = 0;
        self.window_start = now;
        ended
    }

    fn ended(&self) -> Ended {
        Ended {
            key: self.key,
            tenant: self.tenant,
            kind: self.kind,
            locked_at: self.locked_at,
            until: self.locked_until,
            refused: self.refused,
        }
    }

    /// Moves the window forward to `now`: a sliding window approximated by two fixed ones, the
    /// previous one weighted by how much of it still overlaps the sliding window.
    fn roll(&mut self, now: Micros, window: Micros) {
        let window = window.max(1);
        let elapsed = now - self.window_start;
        if elapsed >= 2 * window || elapsed < 0 {
            self.previous = 0;
            self.current = 0;
            self.window_start = now;
        } else if elapsed >= window {
            self.previous = self.current;
            self.current = 0;
            self.window_start += window;
        }
    }

    /// Failures within the sliding window ending now.
    pub fn estimate(&self, now: Micros, window: Micros) -> u32 {
        let window = window.max(1);
        let into = (now - self.window_start).clamp(0, window);
        let weight = (window - into) as f64 / window as f64;
        self.current + (self.previous as f64 * weight).floor() as u32
    }

    /// Counts one failure at `now`.
    pub fn fail(&mut self, now: Micros, policy: &Policy) -> Failure {
        if let Some(until) = self.locked(now) {
            self.refused = self.refused.saturating_add(1);
            self.last_seen = now;
            return Failure::WhileLocked(until);
        }
        if now - self.last_seen > HISTORY {
            self.strikes = 0;
        }
        self.last_seen = now;
        self.roll(now, policy.window);
        self.current = self.current.saturating_add(1);
        let failures = self.estimate(now, policy.window);
        if failures < policy.threshold.max(1) {
            return Failure::Counted(failures);
        }
        let until = now.saturating_add(policy.period_for(self.strikes));
        self.strikes = self.strikes.saturating_add(1);
        self.locked_at = now;
        self.locked_until = until;
        self.refused = 0;
        self.failures = failures;
        // the window starts afresh once the lock-out ends
        self.current = 0;
        self.previous = 0;
        self.window_start = until;
        Failure::LockedNow { until, failures }
    }

    /// A refused attempt while locked out.
    pub fn refuse(&mut self, now: Micros) {
        self.refused = self.refused.saturating_add(1);
        self.last_seen = now;
    }
}

/// The slot of `key` in its bucket, if it is there.
pub fn find(bucket: &[Slot], key: &[u8; 16]) -> Option<usize> {
    bucket.iter().position(|s| !s.is_empty() && s.key == *key)
}

/// Where a new identity goes in a full or partly full bucket: an empty slot, else the slot seen
/// least recently that is not locked out, else (every slot locked out) the lock-out that ends
/// first. An attacker spraying fresh identities therefore evicts counters of identities that
/// stopped failing before any lock-out, and can only reach the lock-outs of a bucket after
/// locking out all eight of its slots themselves.
pub fn victim(bucket: &[Slot], now: Micros) -> usize {
    if let Some(i) = bucket.iter().position(Slot::is_empty) {
        return i;
    }
    let unlocked = bucket
        .iter()
        .enumerate()
        .filter(|(_, s)| s.locked(now).is_none())
        .min_by_key(|(_, s)| s.last_seen);
    if let Some((i, _)) = unlocked {
        return i;
    }
    bucket
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| s.locked_until)
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// The bucket of `key` in a table of `buckets` buckets.
pub fn bucket_of(key: &[u8; 16], buckets: usize) -> usize {
    let h = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
    (h % buckets.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Micros = 60 * SECOND;

    fn policy() -> Policy {
        Policy {
            threshold: 10,
            window: 15 * MIN,
            period: 15 * MIN,
            max_period: 60 * MIN,
        }
    }

    fn slot(n: u8) -> Slot {
        Slot::new([n; 16], [7; 16], Kind::Customer, 0)
    }

    #[test]
    fn locks_out_at_the_threshold_and_not_before() {
        let mut s = slot(1);
        for i in 1..10 {
            assert_eq!(s.fail(i * SECOND, &policy()), Failure::Counted(i as u32));
            assert_eq!(s.locked(i * SECOND), None);
        }
        assert_eq!(
            s.fail(10 * SECOND, &policy()),
            Failure::LockedNow {
                until: 10 * SECOND + 15 * MIN,
                failures: 10
            }
        );
        assert_eq!(s.locked(11 * SECOND), Some(10 * SECOND + 15 * MIN));
        assert_eq!(s.locked(10 * SECOND + 15 * MIN), None);
    }

    #[test]
    fn failures_while_locked_are_summed_and_reported_once() {
        let mut s = slot(1);
        for i in 0..10 {
            s.fail(i, &policy());
        }
        for _ in 0..1000 {
            s.refuse(SECOND);
        }
        assert!(matches!(
            s.fail(2 * SECOND, &policy()),
            Failure::WhileLocked(_)
        ));
        assert_eq!(s.take_ended(3 * SECOND), None, "still locked");
        let end = 9 + 15 * MIN;
        let ended = s.take_ended(end).expect("ended");
        assert_eq!(
            (ended.refused, ended.until, ended.locked_at),
            (1001, end, 9)
        );
        assert_eq!(s.take_ended(end + 1), None, "reported once");
        // a fresh window after the lock-out
        assert_eq!(s.fail(end + SECOND, &policy()), Failure::Counted(1));
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let mut s = slot(1);
        for _ in 0..9 {
            s.fail(0, &policy());
        }
        // just after one window: the previous window still weighs almost fully
        assert_eq!(s.fail(15 * MIN + SECOND, &policy()), Failure::Counted(9));
        // half-way through the next one: half of the previous nine
        assert_eq!(
            s.estimate(15 * MIN + 7 * MIN + 30 * SECOND, 15 * MIN),
            1 + 4
        );
        // two windows later nothing is left
        assert_eq!(
            s.fail(45 * MIN + 2 * SECOND, &policy()),
            Failure::Counted(1)
        );
    }

    #[test]
    fn no_burst_across_a_window_boundary() {
        // nine failures at the end of one window and nine at the start of the next would pass
        // a fixed window; the sliding estimate locks out within the threshold
        let mut s = slot(1);
        for _ in 0..9 {
            s.fail(15 * MIN - SECOND, &policy());
        }
        let locked = (0..9).any(|i| {
            matches!(
                s.fail(15 * MIN + i * SECOND, &policy()),
                Failure::LockedNow { .. }
            )
        });
        assert!(locked);
    }

    #[test]
    fn waits_grow_up_to_the_maximum_and_history_fades() {
        let p = policy();
        assert_eq!(
            [0, 1, 2, 3, 9].map(|s| p.period_for(s) / MIN),
            [15, 30, 60, 60, 60]
        );
        let flat = Policy {
            max_period: 0,
            ..policy()
        };
        assert_eq!(flat.period_for(5), 15 * MIN, "max below period: no growth");
        let mut s = slot(1);
        let mut now = 0;
        let mut lengths = vec![];
        for _ in 0..4 {
            loop {
                now += SECOND;
                if let Failure::LockedNow { until, .. } = s.fail(now, &p) {
                    lengths.push((until - now) / MIN);
                    now = until;
                    break;
                }
            }
        }
        assert_eq!(lengths, [15, 30, 60, 60]);
        // a quiet day later the next lock-out is a first one again
        now += HISTORY + SECOND;
        for _ in 0..9 {
            s.fail(now, &p);
        }
        assert_eq!(
            s.fail(now, &p),
            Failure::LockedNow {
                until: now + 15 * MIN,
                failures: 10
            }
        );
    }

    #[test]
    fn lift_forgets_the_counts() {
        let mut s = slot(1);
        for _ in 0..10 {
            s.fail(0, &policy());
        }
        s.refuse(1);
        let ended = s.lift(2 * SECOND);
        assert_eq!((ended.until, ended.refused), (2 * SECOND, 1));
        assert_eq!(s.locked(3 * SECOND), None);
        assert_eq!(s.fail(3 * SECOND, &policy()), Failure::Counted(1));
    }

    #[test]
    fn eviction_spares_lock_outs() {
        let now = 100 * SECOND;
        let mut bucket = [Slot::default(); WAYS];
        assert_eq!(victim(&bucket, now), 0, "empty first");
        for (i, s) in bucket.iter_mut().enumerate() {
            *s = slot(i as u8 + 1);
            s.last_seen = 50 * SECOND - i as i64;
        }
        // the attacker's locked identity is the oldest, but a counter without a lock goes
        bucket[7].locked_until = now + 10 * MIN;
        assert_eq!(victim(&bucket, now), 6);
        // every slot locked out: the lock-out that ends first goes
        for (i, s) in bucket.iter_mut().enumerate() {
            s.locked_until = now + MIN + i as i64;
        }
        assert_eq!(victim(&bucket, now), 0);
        // an ended lock-out counts as unlocked
        bucket[3].locked_until = now - 1;
        assert_eq!(victim(&bucket, now), 3);
        assert_eq!(find(&bucket, &[4; 16]), Some(3));
        assert_eq!(find(&bucket, &[99; 16]), None);
    }

    #[test]
    fn a_spray_of_fresh_identities_cannot_evict_a_lock_out() {
        // one bucket, one locked identity, a million fresh identities failing once each
        let p = policy();
        let mut bucket = [Slot::default(); WAYS];
        let locked = Slot {
            locked_until: 20 * MIN,
            ..slot(200)
        };
        bucket[0] = locked;
        for n in 0..1_000_000u32 {
            let now = n as i64;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&(n + 1).to_le_bytes());
            key[15] = 1;
            let i = find(&bucket, &key).unwrap_or_else(|| {
                let v = victim(&bucket, now);
                bucket[v] = Slot::new(key, [7; 16], Kind::Client, now);
                v
            });
            bucket[i].fail(now, &p);
        }
        assert_eq!(find(&bucket, &[200; 16]), Some(0));
        assert_eq!(bucket[0].locked(SECOND), Some(20 * MIN));
    }

    #[test]
    fn the_slot_layout_is_fixed() {
        assert_eq!(std::mem::size_of::<Slot>(), 88);
        assert_eq!(bucket_of(&[0; 16], 10), 0);
        let mut k = [0; 16];
        k[0] = 13;
        assert_eq!(bucket_of(&k, 10), 3);
        assert_eq!(Kind::parse("client"), Some(Kind::Client));
        assert_eq!(Kind::from_u8(4), Some(Kind::Address));
        assert_eq!(Kind::parse("ip"), None);
    }
}
