//! Owns the address value types: IPv4 subnets (`Ipv4Cidr`), MAC addresses (`MacAddr`) and the
//! parsers that turn user text into them with errors that say how to fix the input.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use thiserror::Error;

/// Why a piece of address text was rejected. Each message quotes the input and shows a
/// correct form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    #[error("{input:?} is not an IPv4 address; write four decimal octets, e.g. 172.17.0.1")]
    BadIpv4 { input: String },
    #[error("{input:?} has no prefix length; write ADDRESS/PREFIX, e.g. 172.17.0.0/16")]
    MissingPrefix { input: String },
    #[error(
        "prefix length {prefix:?} in {input:?} is not a number from 0 to 32; e.g. 172.17.0.0/16"
    )]
    BadPrefix { input: String, prefix: String },
    #[error("subnet {input} has host bits set; use {network}")]
    HostBitsSet { input: String, network: Ipv4Cidr },
    #[error(
        "{input:?} is not a MAC address; write six two-digit hex octets separated by ':', e.g. 02:42:ac:11:00:02"
    )]
    BadMac { input: String },
    #[error(
        "MAC {mac} is a multicast address (lowest bit of the first octet set); use a unicast one, e.g. 02:42:ac:11:00:02"
    )]
    MulticastMac { mac: MacAddr },
    #[error("MAC 00:00:00:00:00:00 is not a usable address; pick another, e.g. 02:42:ac:11:00:02")]
    ZeroMac,
    #[error(
        "MAC ff:ff:ff:ff:ff:ff is the broadcast address; pick a unicast one, e.g. 02:42:ac:11:00:02"
    )]
    BroadcastMac,
}

/// Parses a dotted-quad IPv4 address (no leading zeros, no surrounding spaces).
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, AddrError> {
    s.parse().map_err(|_| AddrError::BadIpv4 {
        input: s.to_string(),
    })
}

/// An IPv4 subnet such as `172.17.0.0/16`.
///
/// Values made by [`FromStr`], [`Ipv4Cidr::new`] and [`Ipv4Cidr::parse_host`] have no host bits
/// set; the methods mask anyway, so a value built from the public fields still behaves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// A subnet from its network address and prefix; rejects host bits and prefixes over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, AddrError> {
        let input = format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(AddrError::BadPrefix {
                input,
                prefix: prefix.to_string(),
            });
        }
        let network = Self::containing(addr, prefix);
        if network.addr != addr {
            return Err(AddrError::HostBitsSet { input, network });
        }
        Ok(network)
    }

    /// The subnet of `prefix` bits that holds `addr` (host bits cleared). `prefix` is capped at 32.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// Parses `ADDRESS/PREFIX` where the address may be a host inside the subnet, as in Docker's
    /// `bip` ("172.17.0.1/16"); returns the address and its subnet.
    pub fn parse_host(s: &str) -> Result<(Ipv4Addr, Ipv4Cidr), AddrError> {
        let (addr, prefix) = split_cidr(s)?;
        Ok((addr, Self::containing(addr, prefix)))
    }

    /// Network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Highest address of the subnet.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Number of addresses, network and broadcast included (2^32 for /0, hence u64).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix.min(32)))
    }

    /// The `n`th address counted from the network address (0 is the network address itself).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        if n >= self.size() {
            return None;
        }
        // n < size <= 2^32 - network, so the sum fits in u32.
        Some(Ipv4Addr::from(u32::from(self.network()) + n as u32))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// `other` lies wholly inside `self`.
    pub fn contains_subnet(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// The two subnets share at least one address (for CIDRs: one contains the other).
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    fn mask(&self) -> u32 {
        mask(self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Splits and parses `ADDRESS/PREFIX` without judging host bits.
fn split_cidr(s: &str) -> Result<(Ipv4Addr, u8), AddrError> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| AddrError::MissingPrefix {
        input: s.to_string(),
    })?;
    let addr = parse_ipv4(addr).map_err(|_| AddrError::BadIpv4 {
        input: s.to_string(),
    })?;
    // Only canonical decimal: `u8::from_str` would also take "+8" and "008".
    let canonical = !prefix.is_empty()
        && prefix.len() <= 2
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    let bad_prefix = || AddrError::BadPrefix {
        input: s.to_string(),
        prefix: prefix.to_string(),
    };
    let value: u8 = if canonical {
        prefix.parse().map_err(|_| bad_prefix())?
    } else {
        return Err(bad_prefix());
    };
    if value > 32 {
        return Err(bad_prefix());
    }
    Ok((addr, value))
}

impl FromStr for Ipv4Cidr {
    type Err = AddrError;

    /// Strict subnet syntax: `172.17.0.5/16` is refused with a hint to write `172.17.0.0/16`.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (addr, prefix) = split_cidr(s)?;
        let network = Self::containing(addr, prefix);
        if network.addr != addr {
            return Err(AddrError::HostBitsSet {
                input: s.to_string(),
                network,
            });
        }
        Ok(network)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv4Cidr({self})")
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// An Ethernet address, shown as `02:42:ac:11:00:02`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Docker's scheme: locally administered `02:42` followed by the IPv4 address, so a MAC
    /// never collides within a network as long as the addresses do not.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Self([0x02, 0x42, a, b, c, d])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = AddrError;

    /// Six `:`-separated two-digit hex octets, any case; only unicast, non-zero addresses.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let bad = || AddrError::BadMac {
            input: s.to_string(),
        };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in octets.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(octets);
        if octets == [0xff; 6] {
            return Err(AddrError::BroadcastMac);
        }
        if octets[0] & 1 == 1 {
            return Err(AddrError::MulticastMac { mac });
        }
        if octets == [0; 6] {
            return Err(AddrError::ZeroMac);
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test literal")
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("test literal")
    }

    #[test]
    fn parses_valid_subnets() {
        let cases = [
            ("172.17.0.0/16", "172.17.0.0", 16),
            ("10.0.0.0/8", "10.0.0.0", 8),
            ("0.0.0.0/0", "0.0.0.0", 0),
            ("192.168.1.7/32", "192.168.1.7", 32),
            ("192.168.16.0/20", "192.168.16.0", 20),
        ];
        for (input, addr, prefix) in cases {
            let c: Ipv4Cidr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((c.addr, c.prefix), (ip(addr), prefix), "{input}");
            assert_eq!(c.to_string(), input);
        }
    }

    #[test]
    fn rejects_bad_subnets_with_a_fix() {
        let cases = [
            (
                "172.20.0.5/16",
                "subnet 172.20.0.5/16 has host bits set; use 172.20.0.0/16",
            ),
            ("10.1.2.3/8", "use 10.0.0.0/8"),
            ("172.17.0.0", "has no prefix length"),
            ("172.17.0.0/", "prefix length \"\""),
            ("172.17.0.0/33", "prefix length \"33\""),
            ("172.17.0.0/255", "prefix length \"255\""),
            ("172.17.0.0/+8", "prefix length \"+8\""),
            ("172.17.0.0/08", "prefix length \"08\""),
            ("172.17.0.0/-1", "prefix length \"-1\""),
            ("172.17.0.0/16/2", "prefix length \"16/2\""),
            ("172.17.0/16", "is not an IPv4 address"),
            ("172.17.0.256/24", "is not an IPv4 address"),
            ("172.017.0.0/16", "is not an IPv4 address"),
            (" 172.17.0.0/16", "is not an IPv4 address"),
            ("garbage", "has no prefix length"),
            ("", "has no prefix length"),
            ("/16", "is not an IPv4 address"),
            ("::1/128", "is not an IPv4 address"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Ipv4Cidr>().expect_err(input).to_string();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn parse_host_keeps_the_host_and_returns_its_subnet() {
        let cases = [
            ("172.17.0.1/16", "172.17.0.1", "172.17.0.0/16"),
            ("192.168.1.50/24", "192.168.1.50", "192.168.1.0/24"),
            ("10.0.0.0/8", "10.0.0.0", "10.0.0.0/8"),
            ("10.9.8.7/32", "10.9.8.7", "10.9.8.7/32"),
            ("10.9.8.7/0", "10.9.8.7", "0.0.0.0/0"),
        ];
        for (input, host, net) in cases {
            assert_eq!(
                Ipv4Cidr::parse_host(input),
                Ok((ip(host), cidr(net))),
                "{input}"
            );
        }
        for bad in ["172.17.0.1", "172.17.0.1/33", "x/16", "172.17.0.1/a"] {
            assert!(Ipv4Cidr::parse_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_is_as_strict_as_parsing() {
        assert_eq!(
            Ipv4Cidr::new(ip("172.17.0.0"), 16),
            Ok(cidr("172.17.0.0/16"))
        );
        assert_eq!(
            Ipv4Cidr::new(ip("172.17.0.1"), 16)
                .expect_err("host bits")
                .to_string(),
            "subnet 172.17.0.1/16 has host bits set; use 172.17.0.0/16"
        );
        assert!(Ipv4Cidr::new(ip("0.0.0.0"), 33).is_err());
    }

    #[test]
    fn arithmetic() {
        // (cidr, network, broadcast, netmask, size)
        let cases = [
            (
                "172.17.0.0/16",
                "172.17.0.0",
                "172.17.255.255",
                "255.255.0.0",
                65536,
            ),
            (
                "192.168.16.0/20",
                "192.168.16.0",
                "192.168.31.255",
                "255.255.240.0",
                4096,
            ),
            ("10.0.0.4/30", "10.0.0.4", "10.0.0.7", "255.255.255.252", 4),
            ("10.0.0.9/32", "10.0.0.9", "10.0.0.9", "255.255.255.255", 1),
            (
                "0.0.0.0/0",
                "0.0.0.0",
                "255.255.255.255",
                "0.0.0.0",
                1 << 32,
            ),
        ];
        for (c, network, broadcast, netmask, size) in cases {
            let c = cidr(c);
            assert_eq!(c.network(), ip(network), "{c}");
            assert_eq!(c.broadcast(), ip(broadcast), "{c}");
            assert_eq!(c.netmask(), ip(netmask), "{c}");
            assert_eq!(c.size(), size, "{c}");
            assert_eq!(c.nth(0), Some(ip(network)), "{c}");
            assert_eq!(c.nth(size - 1), Some(ip(broadcast)), "{c}");
            assert_eq!(c.nth(size), None, "{c}");
        }
        assert_eq!(cidr("172.17.0.0/16").nth(258), Some(ip("172.17.1.2")));
    }

    #[test]
    fn methods_mask_a_value_built_with_host_bits() {
        let c = Ipv4Cidr {
            addr: ip("172.17.3.4"),
            prefix: 16,
        };
        assert_eq!(c.network(), ip("172.17.0.0"));
        assert_eq!(c.nth(1), Some(ip("172.17.0.1")));
        assert!(c.contains(ip("172.17.200.1")));
    }

    #[test]
    fn containment_and_overlap() {
        // (a, b, a contains b, overlap)
        let cases = [
            ("172.17.0.0/16", "172.17.5.0/24", true, true),
            ("172.17.5.0/24", "172.17.0.0/16", false, true),
            ("172.17.0.0/16", "172.18.0.0/16", false, false),
            ("172.16.0.0/12", "172.31.0.0/16", true, true),
            ("172.16.0.0/12", "172.32.0.0/16", false, false),
            ("10.0.0.0/8", "10.0.0.0/8", true, true),
            ("0.0.0.0/0", "192.168.0.0/16", true, true),
            ("192.168.0.0/20", "192.168.16.0/20", false, false),
        ];
        for (a, b, contains, overlaps) in cases {
            let (a, b) = (cidr(a), cidr(b));
            assert_eq!(a.contains_subnet(&b), contains, "{a} contains {b}");
            assert_eq!(a.overlaps(&b), overlaps, "{a} overlaps {b}");
            assert_eq!(b.overlaps(&a), overlaps, "{b} overlaps {a}");
        }
        let net = cidr("172.17.0.0/16");
        for (addr, inside) in [
            ("172.17.0.0", true),
            ("172.17.255.255", true),
            ("172.18.0.0", false),
            ("172.16.255.255", false),
        ] {
            assert_eq!(net.contains(ip(addr)), inside, "{addr}");
        }
    }

    #[test]
    fn cidr_serde_is_the_display_string() {
        let c = cidr("172.17.0.0/16");
        assert_eq!(
            serde_json::to_string(&c).expect("serialize"),
            "\"172.17.0.0/16\""
        );
        assert_eq!(
            serde_json::from_str::<Ipv4Cidr>("\"172.17.0.0/16\"").expect("parse"),
            c
        );
        let err = serde_json::from_str::<Ipv4Cidr>("\"172.17.0.1/16\"")
            .expect_err("host bits")
            .to_string();
        assert!(err.contains("use 172.17.0.0/16"), "{err}");
        assert!(serde_json::from_str::<Ipv4Cidr>("17").is_err());
    }

    #[test]
    fn parse_ipv4_cases() {
        assert_eq!(parse_ipv4("172.17.0.2"), Ok(ip("172.17.0.2")));
        for bad in [
            "",
            "172.17.0",
            "172.17.0.2.1",
            "256.0.0.1",
            "01.2.3.4",
            "a.b.c.d",
            "172.17.0.2 ",
            "::1",
        ] {
            let err = parse_ipv4(bad).expect_err(bad).to_string();
            assert!(
                err.contains("is not an IPv4 address; write four decimal octets"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn parses_macs() {
        let cases = [
            ("02:42:ac:11:00:02", [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            ("02:42:AC:11:00:02", [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            ("fe:Ed:00:00:00:01", [0xfe, 0xed, 0, 0, 0, 1]),
            ("00:00:00:00:00:01", [0, 0, 0, 0, 0, 1]),
        ];
        for (input, octets) in cases {
            let mac: MacAddr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(mac.octets(), octets, "{input}");
            assert_eq!(mac.to_string(), input.to_lowercase());
        }
    }

    #[test]
    fn rejects_bad_macs() {
        let cases = [
            ("", "is not a MAC address"),
            ("02:42:ac:11:00", "is not a MAC address"),
            ("02:42:ac:11:00:02:03", "is not a MAC address"),
            ("02-42-ac-11-00-02", "is not a MAC address"),
            ("2:42:ac:11:0:2", "is not a MAC address"),
            ("002:42:ac:11:00:02", "is not a MAC address"),
            ("02:42:ac:11:00:0g", "is not a MAC address"),
            ("02:42:ac:11:00:+2", "is not a MAC address"),
            ("02:42:ac:11:00:02:", "is not a MAC address"),
            ("01:00:5e:00:00:01", "is a multicast address"),
            ("33:33:00:00:00:01", "is a multicast address"),
            ("ff:ff:ff:ff:ff:ff", "is the broadcast address"),
            ("FF:FF:FF:FF:FF:FF", "is the broadcast address"),
            ("00:00:00:00:00:00", "is not a usable address"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<MacAddr>().expect_err(input).to_string();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn mac_from_ipv4_is_docker_style() {
        assert_eq!(
            MacAddr::from_ipv4(ip("172.17.0.2")).to_string(),
            "02:42:ac:11:00:02"
        );
        assert_eq!(
            MacAddr::from_ipv4(ip("255.255.255.255")).to_string(),
            "02:42:ff:ff:ff:ff"
        );
    }

    #[test]
    fn mac_serde_is_the_display_string() {
        let mac = MacAddr::from_ipv4(ip("10.0.0.1"));
        let json = serde_json::to_string(&mac).expect("serialize");
        assert_eq!(json, "\"02:42:0a:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).expect("parse"), mac);
        assert!(serde_json::from_str::<MacAddr>("\"ff:ff:ff:ff:ff:ff\"").is_err());
    }
}
