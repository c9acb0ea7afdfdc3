//! A tenant's limits when they are shared by a fleet of keygates (`[fleet] shared_limits`): the
//! local side of what `fleet` keeps on the servers. No I/O here.
//!
//! **Rate**: the fleet's token bucket for the tenant lives on the servers; each keygate leases
//! tokens from it in chunks (`Lease`) and spends them locally, asking for the next chunk when
//! half of the current one is spent. While a lease is on its way, a keygate may run up to one
//! chunk on credit, repaid from the next grant; a keygate whose credit is spent refuses until a
//! grant arrives. So the fleet admits at most its rate plus one chunk per keygate, and never
//! waits on the servers for a request.
//!
//! **Connections**: each AUTH as the tenant asks the servers whether the fleet has room
//! (`Seat`'s verdict, see session); the connection counts locally at once and is released when
//! it closes or is refused.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The local side of a tenant's shared rate.
pub struct Lease {
    rate: u32,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    /// Tokens held; negative: spent on credit, to be repaid from the next grant.
    balance: i64,
    refilling: bool,
    /// After a short grant (the fleet's bucket was empty), no new lease before this.
    not_before: Option<Instant>,
}

/// What `Lease::take` decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    /// Ask the servers for `Lease::wanted` tokens now (and call `granted` with the answer).
    pub refill: bool,
}

impl Lease {
    pub fn new(rate: u32) -> Lease {
        Lease {
            rate,
            state: Mutex::new(LeaseState {
                balance: 0,
                refilling: false,
                not_before: None,
            }),
        }
    }

    /// Tokens per lease: a twentieth of a second's worth (at least one).
    pub fn chunk(&self) -> i64 {
        (i64::from(self.rate) / 20).max(1)
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spend one token, at `now`.
    pub fn take(&self, now: Instant) -> Taken {
        let chunk = self.chunk();
        let mut s = self.lock();
        let allowed = s.balance > -chunk;
        if allowed {
            s.balance -= 1;
        }
        let refill =
            !s.refilling && s.balance <= chunk / 2 && s.not_before.is_none_or(|t| now >= t);
        if refill {
            s.refilling = true;
        }
        Taken { allowed, refill }
    }

    /// How many tokens a lease asks for: a chunk, plus what was spent on credit.
    pub fn wanted(&self) -> i64 {
        let s = self.lock();
        self.chunk() - s.balance.min(0)
    }

    /// The servers granted `got` of `asked` tokens (0 of them on an error).
    pub fn granted(&self, asked: i64, got: i64, now: Instant) {
        let mut s = self.lock();
        s.balance += got;
        s.refilling = false;
        s.not_before = (got < asked).then(|| {
            // The fleet's bucket is short: it refills `rate` a second; wait for what was missing.
            let missing = (asked - got) as f64 / f64::from(self.rate.max(1));
            now + Duration::from_secs_f64(missing.min(1.0))
        });
    }
}

/// Whether the fleet admitted one connection: asked, admitted or refused.
#[derive(Default)]
pub struct Verdict(AtomicU8);

const ASKED: u8 = 0;
const ADMITTED: u8 = 1;
const REFUSED: u8 = 2;

impl Verdict {
    pub fn admit(&self) {
        self.0.store(ADMITTED, Ordering::Release);
    }

    /// Refuse; `true` the first time (so the seat is given back once).
    pub fn refuse(&self) -> bool {
        self.0.swap(REFUSED, Ordering::AcqRel) != REFUSED
    }

    pub fn refused(&self) -> bool {
        self.0.load(Ordering::Acquire) == REFUSED
    }

    pub fn asked(&self) -> bool {
        self.0.load(Ordering::Acquire) == ASKED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_spends_a_chunk_on_credit_then_refuses_until_granted() {
        let lease = Lease::new(200); // chunk 10
        let now = Instant::now();
        let first = lease.take(now);
        assert_eq!(
            first,
            Taken {
                allowed: true,
                refill: true
            }
        );
        // Nine more on credit while the lease is on its way, then refused.
        for _ in 0..9 {
            assert!(lease.take(now).allowed);
        }
        assert!(!lease.take(now).allowed);
        assert_eq!(lease.wanted(), 20);
        lease.granted(20, 20, now);
        for _ in 0..10 {
            assert!(lease.take(now).allowed);
        }
    }

    #[test]
    fn a_short_grant_waits_before_asking_again() {
        let lease = Lease::new(100); // chunk 5
        let now = Instant::now();
        assert!(lease.take(now).refill);
        lease.granted(lease.wanted(), 0, now);
        let again = lease.take(now);
        assert!(!again.refill);
        assert!(lease.take(now + Duration::from_secs(1)).refill);
    }

    #[test]
    fn a_verdict_is_given_back_once() {
        let v = Verdict::default();
        assert!(v.asked());
        assert!(v.refuse());
        assert!(!v.refuse());
        assert!(v.refused());
    }
}
