//! The host's network addresses in CIDR form (`192.0.2.2/24`, `fd00::2/64`), loopback
//! excluded, as dstack's shim reports them in `host_info.json`. Read from `ip -j addr` when
//! `ip` exists, else from `/proc/net/{fib_trie,route,if_inet6}`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;

/// The host's non-loopback addresses (empty when none can be read).
pub async fn addresses() -> Vec<String> {
    let ip = tokio::process::Command::new("ip")
        .args(["-j", "addr"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(10), ip).await
        && out.status.success()
    {
        match parse_ip_json(&String::from_utf8_lossy(&out.stdout)) {
            Ok(addrs) => return addrs,
            Err(e) => tracing::warn!(error = %e, "cannot parse `ip -j addr`, reading /proc"),
        }
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut addrs = parse_proc_ipv4(&read("/proc/net/fib_trie"), &read("/proc/net/route"));
    addrs.extend(parse_proc_ipv6(&read("/proc/net/if_inet6")));
    addrs
}

#[derive(Deserialize)]
struct IpLink {
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

/// Parses `ip -j addr` (an array of links with `addr_info[{family, local, prefixlen}]`).
pub fn parse_ip_json(output: &str) -> Result<Vec<String>, serde_json::Error> {
    let links: Vec<IpLink> = serde_json::from_str(output)?;
    Ok(links
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter_map(|a| {
            let local = a.local?;
            let ip: std::net::IpAddr = local.parse().ok()?;
            (!ip.is_loopback()).then(|| {
                format!(
                    "{ip}/{}",
                    a.prefixlen.unwrap_or(if ip.is_ipv4() { 32 } else { 128 })
                )
            })
        })
        .collect())
}

/// IPv4 addresses: the `/32 host LOCAL` leaves of `/proc/net/fib_trie`, with the prefix of
/// the longest matching route in `/proc/net/route` (hex, little-endian).
pub fn parse_proc_ipv4(fib_trie: &str, route: &str) -> Vec<String> {
    // The kernel prints the in-memory (network-order) words as native integers.
    let net = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
    };
    let routes: Vec<(u32, u32)> = route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some((net(f.get(1)?)?, net(f.get(7)?)?))
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut last_ip: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last_ip = rest.trim().parse().ok();
        } else if t.ends_with("host LOCAL") {
            let Some(ip) = last_ip.take() else { continue };
            if ip.is_loopback() {
                continue;
            }
            let raw = u32::from_be_bytes(ip.octets());
            let prefix = routes
                .iter()
                .filter_map(|&(dest, mask)| {
                    (mask != 0 && raw & mask == dest).then_some(mask.count_ones())
                })
                .max()
                .unwrap_or(32);
            let cidr = format!("{ip}/{prefix}");
            if !out.contains(&cidr) {
                out.push(cidr);
            }
        }
    }
    out
}

/// IPv6 addresses from `/proc/net/if_inet6` (`addr-hex ifindex prefix-hex scope flags name`).
pub fn parse_proc_ipv6(if_inet6: &str) -> Vec<String> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = f.first()?;
            let prefix = u8::from_str_radix(f.get(2)?, 16).ok()?;
            let raw = u128::from_str_radix(hex, 16).ok()?;
            let ip = Ipv6Addr::from(raw);
            (!ip.is_loopback()).then(|| format!("{ip}/{prefix}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_JSON: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[
        {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"},
        {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
      {"ifindex":2,"ifname":"ifb0","addr_info":[]},
      {"ifindex":4,"ifname":"eth0","addr_info":[
        {"family":"inet","local":"192.0.2.2","prefixlen":24,"broadcast":"192.0.2.255"},
        {"family":"inet6","local":"fd00::2","prefixlen":64},
        {"family":"inet6","local":"fe80::fc:ff:fe00:1","prefixlen":64,"scope":"link"}]}]"#;

    #[test]
    fn parses_ip_json() {
        assert_eq!(
            parse_ip_json(IP_JSON).unwrap(),
            vec!["192.0.2.2/24", "fd00::2/64", "fe80::fc:ff:fe00:1/64"]
        );
        assert!(parse_ip_json("nope").is_err());
    }

    #[test]
    fn parses_proc_fallback() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                   |-- 127.0.0.1\n  /32 host LOCAL\n  +-- 192.0.2.0/24 2 0 2\n\
                   |-- 192.0.2.0\n   /24 link UNICAST\n   |-- 192.0.2.2\n   /32 host LOCAL\n\
                   |-- 192.0.2.255\n  /32 link BROADCAST\nLocal:\n   |-- 192.0.2.2\n   /32 host LOCAL\n";
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_proc_ipv4(fib, route), vec!["192.0.2.2/24"]);
        let v6 = "fd000000000000000000000000000002 04 40 00 80     eth0\n\
                  00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(parse_proc_ipv6(v6), vec!["fd00::2/64"]);
    }
}
