//! Source addresses: `127.0.0.1-127.0.0.20`, `127.0.0.1,127.0.0.2`, or a mix. Each loopback
//! address has its own ~28,000 ephemeral ports, so spreading connections over several keeps a
//! large run (and its storms, whose closed sockets sit in `TIME_WAIT`) from running out.

use std::net::{IpAddr, Ipv4Addr};

/// At most this many addresses from one flag: more is surely a typo.
pub const MAX_ADDRS: usize = 65_536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrsError {
    #[error("no address given")]
    Empty,
    #[error("`{0}` is not an IP address")]
    NotAnAddress(String),
    #[error("range `{0}`: ranges are IPv4 only, from the lower address to the higher")]
    BadRange(String),
    #[error("more than {MAX_ADDRS} addresses")]
    TooMany,
}

/// Parses a comma-separated list of addresses and inclusive IPv4 ranges, in order, duplicates
/// kept out.
pub fn parse_source_addrs(text: &str) -> Result<Vec<IpAddr>, AddrsError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((low, high)) = item.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| AddrsError::BadRange(item.to_owned()))
            };
            let (low, high) = (u32::from(parse(low)?), u32::from(parse(high)?));
            if low > high {
                return Err(AddrsError::BadRange(item.to_owned()));
            }
            if (high - low) as usize >= MAX_ADDRS {
                return Err(AddrsError::TooMany);
            }
            for n in low..=high {
                push(&mut out, IpAddr::V4(Ipv4Addr::from(n)))?;
            }
        } else {
            let addr = item
                .parse::<IpAddr>()
                .map_err(|_| AddrsError::NotAnAddress(item.to_owned()))?;
            push(&mut out, addr)?;
        }
    }
    if out.is_empty() {
        return Err(AddrsError::Empty);
    }
    Ok(out)
}

fn push(out: &mut Vec<IpAddr>, addr: IpAddr) -> Result<(), AddrsError> {
    if !out.contains(&addr) {
        if out.len() >= MAX_ADDRS {
            return Err(AddrsError::TooMany);
        }
        out.push(addr);
    }
    Ok(())
}

/// The source address of collector `index`: round robin over the list, or none (the kernel
/// chooses) when the list is empty.
pub fn source_for(addrs: &[IpAddr], index: usize) -> Option<IpAddr> {
    if addrs.is_empty() {
        None
    } else {
        Some(addrs[index % addrs.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn a_range_is_inclusive() {
        let addrs = parse_source_addrs("127.0.0.1-127.0.0.20").unwrap();
        assert_eq!(addrs.len(), 20);
        assert_eq!(addrs[0], v4(127, 0, 0, 1));
        assert_eq!(addrs[19], v4(127, 0, 0, 20));
    }

    #[test]
    fn ranges_cross_octets() {
        let addrs = parse_source_addrs("127.0.0.254-127.0.1.1").unwrap();
        assert_eq!(
            addrs,
            [
                v4(127, 0, 0, 254),
                v4(127, 0, 0, 255),
                v4(127, 0, 1, 0),
                v4(127, 0, 1, 1)
            ]
        );
    }

    #[test]
    fn lists_mix_addresses_and_ranges_without_duplicates() {
        let addrs = parse_source_addrs(" 127.0.0.5, 127.0.0.1-127.0.0.2,127.0.0.1, ::1 ").unwrap();
        assert_eq!(
            addrs,
            [
                v4(127, 0, 0, 5),
                v4(127, 0, 0, 1),
                v4(127, 0, 0, 2),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(parse_source_addrs("127.0.0.9").unwrap(), [v4(127, 0, 0, 9)]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(parse_source_addrs(""), Err(AddrsError::Empty));
        assert_eq!(parse_source_addrs(" , "), Err(AddrsError::Empty));
        assert!(matches!(
            parse_source_addrs("localhost"),
            Err(AddrsError::NotAnAddress(_))
        ));
        assert!(matches!(
            parse_source_addrs("127.0.0.9-127.0.0.1"),
            Err(AddrsError::BadRange(_))
        ));
        assert!(matches!(
            parse_source_addrs("::1-::2"),
            Err(AddrsError::BadRange(_))
        ));
        assert_eq!(
            parse_source_addrs("10.0.0.0-10.255.255.255"),
            Err(AddrsError::TooMany)
        );
    }

    #[test]
    fn collectors_are_spread_round_robin() {
        let addrs = [v4(127, 0, 0, 1), v4(127, 0, 0, 2), v4(127, 0, 0, 3)];
        let picked: Vec<_> = (0..5).map(|i| source_for(&addrs, i)).collect();
        assert_eq!(
            picked,
            [
                Some(addrs[0]),
                Some(addrs[1]),
                Some(addrs[2]),
                Some(addrs[0]),
                Some(addrs[1])
            ]
        );
        assert_eq!(source_for(&[], 4), None);
    }
}
