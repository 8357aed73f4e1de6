//! IP address and network checks for SSH fleets, with Python's `ipaddress` notion of
//! "private" (the IANA special-purpose registries as of Python 3.11).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_PRIVATE: &[(u32, u32)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8
    (0x0A00_0000, 8),  // 10.0.0.0/8
    (0x7F00_0000, 8),  // 127.0.0.0/8
    (0xA9FE_0000, 16), // 169.254.0.0/16
    (0xAC10_0000, 12), // 172.16.0.0/12
    (0xC000_0000, 29), // 192.0.0.0/29
    (0xC000_00AA, 31), // 192.0.0.170/31
    (0xC000_0200, 24), // 192.0.2.0/24
    (0xC0A8_0000, 16), // 192.168.0.0/16
    (0xC612_0000, 15), // 198.18.0.0/15
    (0xC633_6400, 24), // 198.51.100.0/24
    (0xCB00_7100, 24), // 203.0.113.0/24
    (0xF000_0000, 4),  // 240.0.0.0/4
    (0xFFFF_FFFF, 32), // 255.255.255.255/32
];

const V6_PRIVATE: &[(u128, u32)] = &[
    (1, 128),                                        // ::1/128
    (0, 128),                                        // ::/128
    (0xFFFF_0000_0000, 96),                          // ::ffff:0:0/96
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // 100::/64
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23), // 2001::/23
    (0x2001_0002_0000_0000_0000_0000_0000_0000, 48), // 2001:2::/48
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32
    (0x2001_0010_0000_0000_0000_0000_0000_0000, 28), // 2001:10::/28
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // fc00::/7
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // fe80::/10
];

fn mask4(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn mask6(prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

fn v4_in(addr: u32, net: u32, prefix: u32) -> bool {
    addr & mask4(prefix) == net
}

fn v6_in(addr: u128, net: u128, prefix: u32) -> bool {
    addr & mask6(prefix) == net
}

/// Whether an IPv4 network `[first, last]` lies inside one private block.
fn v4_range_private(first: u32, last: u32) -> bool {
    V4_PRIVATE
        .iter()
        .any(|&(n, p)| v4_in(first, n, p) && v4_in(last, n, p))
}

fn v6_range_private(first: u128, last: u128) -> bool {
    V6_PRIVATE
        .iter()
        .any(|&(n, p)| v6_in(first, n, p) && v6_in(last, n, p))
}

/// Whether an address is private (an IPv4-mapped IPv6 address is judged as its IPv4 address).
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let x = u32::from(a);
            v4_range_private(x, x)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = ipv4_mapped(a) {
                return is_private_ip(IpAddr::V4(v4));
            }
            let x = u128::from(a);
            v6_range_private(x, x)
        }
    }
}

fn ipv4_mapped(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let x = u128::from(a);
    (x >> 32 == 0xFFFF).then(|| Ipv4Addr::from((x & 0xFFFF_FFFF) as u32))
}

/// Parses an IP address as Python's `ipaddress.ip_address` does for strings.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn parse_v4_prefix(mask: &str) -> Option<u32> {
    if !mask.is_empty() && mask.chars().all(|c| c.is_ascii_digit()) {
        let p: u32 = mask.parse().ok()?;
        return (p <= 32).then_some(p);
    }
    // A netmask (255.255.0.0) or a hostmask (0.0.255.255).
    let m: Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(m);
    let contiguous = |b: u32| b.leading_ones() + b.trailing_zeros() == 32;
    if contiguous(bits) {
        return Some(bits.leading_ones());
    }
    if contiguous(!bits) {
        return Some((!bits).leading_ones());
    }
    None
}

/// Checks an `ip/mask` network the way dstack does (`ip_network(value, strict=False)` must be
/// private); returns the error message on failure.
pub fn check_private_network(value: &str) -> Result<(), String> {
    let bad = || format!("Failed to parse network: {value}");
    let (addr, mask) = match value.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (value, None),
    };
    let private = match addr.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(a) => {
            let prefix = match mask {
                None => 32,
                Some(m) => parse_v4_prefix(m).ok_or_else(bad)?,
            };
            let first = u32::from(a) & mask4(prefix);
            let last = first | !mask4(prefix);
            v4_range_private(first, last)
        }
        IpAddr::V6(a) => {
            let prefix = match mask {
                None => 128,
                Some(m) => {
                    if m.is_empty() || !m.chars().all(|c| c.is_ascii_digit()) {
                        return Err(bad());
                    }
                    let p: u32 = m.parse().map_err(|_| bad())?;
                    if p > 128 {
                        return Err(bad());
                    }
                    p
                }
            };
            let first = u128::from(a) & mask6(prefix);
            let last = first | !mask6(prefix);
            v6_range_private(first, last)
        }
    };
    if !private {
        return Err("Public network is specified when private network is required".into());
    }
    Ok(())
}

/// Checks that `value` is a private IP address; returns the error message on failure.
pub fn check_private_ip(value: &str) -> Result<(), String> {
    let ip = parse_ip(value).ok_or_else(|| "Invalid IP address".to_string())?;
    if !is_private_ip(ip) {
        return Err("IP address is not private".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_checks() {
        assert!(check_private_ip("10.0.0.5").is_ok());
        assert!(check_private_ip("8.8.8.8").is_err());
        assert!(check_private_ip("fd00::1").is_ok());
        assert!(check_private_ip("nope").is_err());
        assert!(check_private_network("10.0.0.0/8").is_ok());
        assert!(check_private_network("10.1.2.3/24").is_ok());
        assert!(check_private_network("192.168.0.0/255.255.0.0").is_ok());
        assert!(check_private_network("0.0.0.0/0").is_err());
        assert!(check_private_network("10.0.0.0/33").is_err());
    }
}
