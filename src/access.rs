//! Who may connect and how often they may fail to authenticate: address lists in CIDR notation
//! (global at accept, per tenant at AUTH) and a per-address limit on failed AUTH attempts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
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

/// Failed AUTH attempts per client address over a sliding minute.
pub struct AuthFailures {
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (older entries are dropped first when full).
const REMEMBERED: usize = 100_000;

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl AuthFailures {
    /// `addr` has failed `max` times within the last minute: refuse its AUTH without trying.
    pub fn blocked(&self, addr: IpAddr, max: u32) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&addr)
            .is_some_and(|&(count, since)| count >= max && since.elapsed() < WINDOW)
    }

    pub fn failed(&self, addr: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let entry = seen.entry(addr).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
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
    fn failures_block_after_the_limit() {
        let failures = AuthFailures::default();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(!failures.blocked(addr, 3));
            failures.failed(addr);
        }
        assert!(failures.blocked(addr, 3));
        assert!(!failures.blocked("192.0.2.2".parse().unwrap(), 3));
    }
}
