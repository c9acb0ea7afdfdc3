//! Who may connect and how often they may fail to authenticate: address lists in CIDR notation
//! (global at accept, per tenant at AUTH), a limit on failed AUTH attempts per address and
//! tenant name, and a limit on connections per address that have not authenticated yet.
//!
//! Both limits are shaped so that one address cannot lock other clients out: failures count
//! against the name they tried (a wrong password for one tenant never refuses another tenant's
//! correct one, even from the same address, such as a sidecar's loopback or a NAT), and only
//! connections that have not authenticated count against their address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or address block (CIDR)"))?;
        let (bits, v4, value) = match addr {
            IpAddr::V4(a) => (32u32, true, u32::from(a) as u128),
            IpAddr::V6(a) => (128u32, false, u128::from(a)),
        };
        let len = match len {
            None => bits,
            Some(len) => match len.parse::<u32>() {
                Ok(len) if len <= bits => len,
                _ => return Err(format!("{text:?}: prefix length must be 0 to {bits}")),
            },
        };
        let mask = match len {
            0 => 0,
            len => (u128::MAX << (bits - len)) & (u128::MAX >> (128 - bits)),
        };
        Ok(Cidr {
            net: value & mask,
            mask,
            v4,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let (v4, value) = match addr {
            IpAddr::V4(a) => (true, u32::from(a) as u128),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => (true, u32::from(a) as u128),
                None => (false, u128::from(a)),
            },
        };
        v4 == self.v4 && value & self.mask == self.net
    }
}

/// An address may connect if no `deny` block holds it and, when `allow` is not empty, an
/// `allow` block does.
pub fn permitted(addr: IpAddr, allow: &[Cidr], deny: &[Cidr]) -> bool {
    !deny.iter().any(|c| c.contains(addr))
        && (allow.is_empty() || allow.iter().any(|c| c.contains(addr)))
}

/// Failed AUTH attempts per client address and tenant name (empty for `AUTH password`) over a
/// minute from the first failure.
#[derive(Default)]
pub struct AuthFailures {
    /// (failures, since when) per (address, name tried).
    seen: Mutex<HashMap<Tried, (u32, Instant)>>,
}

/// An address and the tenant name it tried.
type Tried = (IpAddr, Box<[u8]>);

const WINDOW: Duration = Duration::from_secs(60);
/// (address, name) pairs remembered at most: about 6 MiB.
const REMEMBERED: usize = 100_000;

impl AuthFailures {
    /// `addr` has failed `max` times within the minute to authenticate as `name`: refuse its
    /// AUTH as `name` without trying.
    pub fn blocked(&self, addr: IpAddr, name: &[u8], max: u32) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&(addr, name.into()))
            .is_some_and(|&(count, since)| count >= max && since.elapsed() < WINDOW)
    }

    /// Count a failure; returns how many `addr` has had for `name` within the minute.
    pub fn failed(&self, addr: IpAddr, name: &[u8], max: u32) -> u32 {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (addr, Box::<[u8]>::from(name));
        if seen.len() >= REMEMBERED && !seen.contains_key(&key) {
            // Forget what has expired, then what is not (yet) a lock-out: a flood of made-up
            // names must not push a real lock-out out of memory.
            seen.retain(|_, (count, since)| since.elapsed() < WINDOW && *count >= max);
            if seen.len() >= REMEMBERED {
                return 0;
            }
        }
        let entry = seen.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0
    }
}

/// Connections that have not authenticated yet, per client address (with tenants configured).
#[derive(Default)]
pub struct Unauthenticated {
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted in `Unauthenticated` until it authenticates or closes (dropped).
pub struct Pending {
    count: Arc<Unauthenticated>,
    addr: IpAddr,
}

impl Unauthenticated {
    /// Count a new connection from `addr`, unless `max` from there are already waiting to
    /// authenticate (`max` 0: no limit).
    pub fn admit(self: &Arc<Self>, addr: IpAddr, max: usize) -> Option<Pending> {
        let mut per_address = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_address.entry(addr).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(Pending {
            count: self.clone(),
            addr,
        })
    }

    /// Connections from `addr` not authenticated yet.
    pub fn from(&self, addr: IpAddr) -> usize {
        let per_address = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        per_address.get(&addr).copied().unwrap_or(0)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut per_address = self
            .count
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_address.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_match_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.9.9")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:1::5")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        let allow = [Cidr::parse("10.0.0.0/8").unwrap()];
        let deny = [Cidr::parse("10.9.0.0/16").unwrap()];
        assert!(permitted(ip("10.1.1.1"), &allow, &deny));
        assert!(!permitted(ip("10.9.1.1"), &allow, &deny));
        assert!(!permitted(ip("192.168.1.1"), &allow, &deny));
        assert!(permitted(ip("192.168.1.1"), &[], &deny));
    }

    #[test]
    fn failures_block_one_name_from_one_address() {
        let failures = AuthFailures::default();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        for n in 1..=3 {
            assert!(!failures.blocked(addr, b"acme", 3));
            assert_eq!(failures.failed(addr, b"acme", 3), n);
        }
        assert!(failures.blocked(addr, b"acme", 3));
        assert!(!failures.blocked(addr, b"globex", 3));
        assert!(!failures.blocked(addr, b"", 3));
        assert!(!failures.blocked("192.0.2.2".parse().unwrap(), b"acme", 3));
    }

    #[test]
    fn made_up_names_cannot_push_a_lockout_out_of_memory() {
        let failures = AuthFailures::default();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            failures.failed(addr, b"acme", 3);
        }
        for i in 0..REMEMBERED + 10 {
            failures.failed(addr, format!("junk{i}").as_bytes(), 3);
        }
        assert!(failures.blocked(addr, b"acme", 3));
        assert!(failures.seen.lock().unwrap().len() <= REMEMBERED);
    }

    #[test]
    fn unauthenticated_connections_are_counted_per_address() {
        let count = Arc::new(Unauthenticated::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = count.admit(a, 2).unwrap();
        let _second = count.admit(a, 2).unwrap();
        assert!(count.admit(a, 2).is_none());
        let _other = count
            .admit(b, 2)
            .expect("another address is not limited by a's");
        drop(first);
        assert_eq!(count.from(a), 1);
        let _third = count
            .admit(a, 2)
            .expect("room once one authenticated or left");
        assert!(count.admit(a, 0).is_some(), "0: no limit");
    }
}
