//! Owns address management: which subnet a new network gets, which address a new endpoint
//! gets, and the rules a network's addressing must follow. Pure functions over records; the
//! addresses in use are derived from endpoint records, never kept as a separate free list.
use std::{collections::BTreeMap, net::Ipv4Addr};

use thiserror::Error;

use crate::{
    addr::Ipv4Cidr,
    model::{Endpoint, Network},
};

/// Why a subnet or address could not be chosen or a network's addressing is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IpamError {
    #[error(
        "no free subnet left in the address pool: all {candidates} candidates overlap existing networks or host routes; choose one with --subnet"
    )]
    PoolExhausted { candidates: u64 },
    #[error("address pool entry {base} cannot be split into /{size} subnets; use a size from /{} to /30", base.prefix)]
    BadPoolRange { base: Ipv4Cidr, size: u8 },
    #[error("subnet {subnet} overlaps network {network} ({existing}); choose another --subnet")]
    Overlap {
        subnet: Ipv4Cidr,
        network: String,
        existing: Ipv4Cidr,
    },
    #[error("{ip} is outside network {network}'s subnet {subnet}; pick an address inside it")]
    OutsideSubnet {
        ip: Ipv4Addr,
        network: String,
        subnet: Ipv4Cidr,
    },
    #[error("{ip} is the {what} address of network {network} ({subnet}); pick a host address")]
    Reserved {
        ip: Ipv4Addr,
        what: &'static str,
        network: String,
        subnet: Ipv4Cidr,
    },
    #[error("{ip} is the gateway of network {network}; pick another address")]
    IsGateway { ip: Ipv4Addr, network: String },
    #[error("{ip} is already used by endpoint {owner}; pick another address or leave --ip out")]
    InUse { ip: Ipv4Addr, owner: String },
    #[error(
        "network {network} has no free address left in {range}; create a network with a larger --subnet (or --ip-range) for new endpoints"
    )]
    Full { network: String, range: Ipv4Cidr },
    #[error("subnet {subnet} of network {network} has host bits set; use {}", Ipv4Cidr::containing(subnet.addr, subnet.prefix))]
    SubnetHostBits { network: String, subnet: Ipv4Cidr },
    #[error(
        "subnet {subnet} of network {network} is too small; use a prefix of /{MAX_SUBNET_PREFIX} or shorter, e.g. /24"
    )]
    SubnetTooSmall { network: String, subnet: Ipv4Cidr },
    #[error("gateway {gateway} is outside network {network}'s subnet {subnet}; use an address inside it, e.g. {}", default_gateway(*subnet))]
    GatewayOutside {
        gateway: Ipv4Addr,
        network: String,
        subnet: Ipv4Cidr,
    },
    #[error("gateway {gateway} is the {what} address of network {network}'s subnet {subnet}; use a host address, e.g. {}", default_gateway(*subnet))]
    GatewayReserved {
        gateway: Ipv4Addr,
        what: &'static str,
        network: String,
        subnet: Ipv4Cidr,
    },
    #[error(
        "ip-range {range} of network {network} is not inside its subnet {subnet}; use a range inside the subnet"
    )]
    RangeOutside {
        range: Ipv4Cidr,
        network: String,
        subnet: Ipv4Cidr,
    },
    #[error(
        "MTU {mtu} of network {network} is out of range; use a value from 68 to 65535 (usually 1500)"
    )]
    BadMtu { mtu: u32, network: String },
}

pub type Result<T> = std::result::Result<T, IpamError>;

/// Longest subnet prefix a network may have: a /30 still has two host addresses (gateway and
/// one endpoint); /31 and /32 have no room for both.
pub const MAX_SUBNET_PREFIX: u8 = 30;
/// Smallest and largest MTU accepted (IPv4 minimum, largest a veth takes).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// A block of address space cut into equal subnets, like an entry of Docker's
/// `default-address-pools` (`{"base": "192.168.0.0/16", "size": 20}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolRange {
    base: Ipv4Cidr,
    size: u8,
}

impl PoolRange {
    /// `size` is the prefix length of each subnet; it must be at least the base's prefix and at
    /// most [`MAX_SUBNET_PREFIX`].
    pub fn new(base: Ipv4Cidr, size: u8) -> Result<Self> {
        if size < base.prefix || size > MAX_SUBNET_PREFIX {
            return Err(IpamError::BadPoolRange { base, size });
        }
        Ok(Self {
            base: Ipv4Cidr::containing(base.addr, base.prefix),
            size,
        })
    }

    pub fn base(&self) -> Ipv4Cidr {
        self.base
    }

    pub fn size(&self) -> u8 {
        self.size
    }

    /// Number of subnets in the range.
    pub fn count(&self) -> u64 {
        1u64 << (self.size - self.base.prefix)
    }

    /// Addresses per subnet.
    fn step(&self) -> u64 {
        1u64 << (32 - u32::from(self.size))
    }

    /// The `index`th subnet of the range.
    fn subnet(&self, index: u64) -> Ipv4Cidr {
        let start = u64::from(u32::from(self.base.network())) + index * self.step();
        // index < count, so start stays inside the base (a u32).
        Ipv4Cidr::containing(Ipv4Addr::from(start as u32), self.size)
    }
}

/// Docker's default pool: 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/16 in /20s.
pub fn default_pool() -> Vec<PoolRange> {
    let sixteens = (17..=31).map(|second| PoolRange {
        base: Ipv4Cidr::containing(Ipv4Addr::new(172, second, 0, 0), 16),
        size: 16,
    });
    let twenties = PoolRange {
        base: Ipv4Cidr::containing(Ipv4Addr::new(192, 168, 0, 0), 16),
        size: 20,
    };
    sixteens.chain(std::iter::once(twenties)).collect()
}

/// First subnet of the pool that overlaps none of `taken` (subnets of existing networks and
/// everything the host already routes).
pub fn pick_subnet(taken: &[Ipv4Cidr], pool: &[PoolRange]) -> Result<Ipv4Cidr> {
    let blocked = merged_spans(taken);
    let mut candidates = 0u64;
    for range in pool {
        let step = range.step();
        let base = u64::from(u32::from(range.base.network()));
        let mut index = 0;
        while index < range.count() {
            let start = base + index * step;
            let end = start + step - 1;
            let first_reaching = blocked.partition_point(|&(_, blocked_end)| blocked_end < start);
            match blocked.get(first_reaching) {
                // Jump past the whole blocking span instead of testing each candidate it covers.
                Some(&(blocked_start, blocked_end)) if blocked_start <= end => {
                    let next = (blocked_end + 1 - base).div_ceil(step);
                    candidates += next.min(range.count()) - index;
                    index = next;
                }
                _ => return Ok(range.subnet(index)),
            }
        }
    }
    Err(IpamError::PoolExhausted { candidates })
}

/// `subnets` as sorted, disjoint, inclusive address spans (u64 so that `end + 1` never wraps).
fn merged_spans(subnets: &[Ipv4Cidr]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = subnets
        .iter()
        .map(|s| {
            (
                u64::from(u32::from(s.network())),
                u64::from(u32::from(s.broadcast())),
            )
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some((_, last_end)) if start <= *last_end + 1 => *last_end = (*last_end).max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Refuses a subnet that overlaps one of the named existing subnets.
pub fn check_overlap(new: Ipv4Cidr, existing: &[(String, Ipv4Cidr)]) -> Result<()> {
    match existing.iter().find(|(_, subnet)| subnet.overlaps(&new)) {
        Some((name, subnet)) => Err(IpamError::Overlap {
            subnet: new,
            network: name.clone(),
            existing: *subnet,
        }),
        None => Ok(()),
    }
}

/// The first host address of a subnet (Docker's choice). A /32 has none; its only address is
/// returned and [`validate_network`] refuses such a subnet anyway.
pub fn default_gateway(subnet: Ipv4Cidr) -> Ipv4Addr {
    subnet.nth(1).unwrap_or_else(|| subnet.network())
}

/// Checks a network's addressing before it is created or stored.
pub fn validate_network(net: &Network) -> Result<()> {
    let (subnet, network) = (net.subnet, || net.name.clone());
    if subnet.addr != subnet.network() {
        return Err(IpamError::SubnetHostBits {
            network: network(),
            subnet,
        });
    }
    if subnet.prefix > MAX_SUBNET_PREFIX {
        return Err(IpamError::SubnetTooSmall {
            network: network(),
            subnet,
        });
    }
    if !subnet.contains(net.gateway) {
        return Err(IpamError::GatewayOutside {
            gateway: net.gateway,
            network: network(),
            subnet,
        });
    }
    if let Some(what) = reserved_role(subnet, net.gateway) {
        return Err(IpamError::GatewayReserved {
            gateway: net.gateway,
            what,
            network: network(),
            subnet,
        });
    }
    if let Some(range) = net.ip_range.filter(|r| !subnet.contains_subnet(r)) {
        return Err(IpamError::RangeOutside {
            range,
            network: network(),
            subnet,
        });
    }
    if !MTU_RANGE.contains(&net.mtu) {
        return Err(IpamError::BadMtu {
            mtu: net.mtu,
            network: network(),
        });
    }
    Ok(())
}

/// "network" or "broadcast" when `ip` is one of the two addresses of `subnet` no host may have.
fn reserved_role(subnet: Ipv4Cidr, ip: Ipv4Addr) -> Option<&'static str> {
    if ip == subnet.network() {
        Some("network")
    } else if ip == subnet.broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// Addresses held on `network` by any endpoint record, whatever its lifecycle state, mapped to
/// the endpoint's name.
pub fn addresses_in_use(network: &str, endpoints: &[Endpoint]) -> BTreeMap<Ipv4Addr, String> {
    endpoints
        .iter()
        .flat_map(|ep| {
            ep.attachments
                .iter()
                .filter(|a| a.network == network)
                .map(move |a| (a.ip, ep.name.clone()))
        })
        .collect()
}

/// Chooses an endpoint address on `net`: the requested one if it is free and allowed, else the
/// lowest free address of the ip-range (or subnet). `used` maps address to owning endpoint.
pub fn allocate_ip(
    net: &Network,
    used: &BTreeMap<Ipv4Addr, String>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let subnet = net.subnet;
    if let Some(ip) = requested {
        if !subnet.contains(ip) {
            return Err(IpamError::OutsideSubnet {
                ip,
                network: net.name.clone(),
                subnet,
            });
        }
        // Like Docker, a requested address may lie outside the ip-range (which only bounds
        // automatic allocation): that is how static addresses are kept apart from dynamic ones.
        if let Some(what) = reserved_role(subnet, ip) {
            return Err(IpamError::Reserved {
                ip,
                what,
                network: net.name.clone(),
                subnet,
            });
        }
        if ip == net.gateway {
            return Err(IpamError::IsGateway {
                ip,
                network: net.name.clone(),
            });
        }
        if let Some(owner) = used.get(&ip) {
            return Err(IpamError::InUse {
                ip,
                owner: owner.clone(),
            });
        }
        return Ok(ip);
    }
    let range = net.ip_range.unwrap_or(subnet);
    let (first, last) = (range.network(), range.broadcast());
    // One walk over the range in step with the sorted used addresses inside it.
    let mut used_in_range = used
        .range(first..=last)
        .map(|(ip, _)| u32::from(*ip))
        .peekable();
    for candidate in u32::from(first)..=u32::from(last) {
        if used_in_range.next_if_eq(&candidate).is_some() {
            continue;
        }
        let ip = Ipv4Addr::from(candidate);
        if ip != net.gateway && reserved_role(subnet, ip).is_none() {
            return Ok(ip);
        }
    }
    Err(IpamError::Full {
        network: net.name.clone(),
        range,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        addr::MacAddr,
        model::{Attachment, EndpointMode, Lifecycle},
    };

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test literal")
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("test literal")
    }

    fn network(subnet: &str, gateway: &str, ip_range: Option<&str>) -> Network {
        Network {
            id: 1,
            name: "web".into(),
            driver: "bridge".into(),
            subnet: cidr(subnet),
            gateway: ip(gateway),
            ip_range: ip_range.map(cidr),
            internal: false,
            icc: true,
            masquerade: true,
            mtu: 1500,
            bridge: "np-web".into(),
            bridge_external: false,
            created: 0,
        }
    }

    fn used(entries: &[(&str, &str)]) -> BTreeMap<Ipv4Addr, String> {
        entries
            .iter()
            .map(|(a, o)| (ip(a), o.to_string()))
            .collect()
    }

    #[test]
    fn default_pool_is_dockers() {
        let pool = default_pool();
        assert_eq!(pool.len(), 16);
        assert_eq!(
            (pool[0].base(), pool[0].size()),
            (cidr("172.17.0.0/16"), 16)
        );
        assert_eq!(
            (pool[14].base(), pool[14].size()),
            (cidr("172.31.0.0/16"), 16)
        );
        assert_eq!(
            (pool[15].base(), pool[15].size()),
            (cidr("192.168.0.0/16"), 20)
        );
        assert_eq!(pool.iter().map(PoolRange::count).sum::<u64>(), 15 + 16);
    }

    #[test]
    fn pool_range_rejects_impossible_sizes() {
        assert!(PoolRange::new(cidr("10.0.0.0/8"), 24).is_ok());
        assert!(PoolRange::new(cidr("10.0.0.0/8"), 8).is_ok());
        for (base, size) in [("10.0.0.0/16", 8), ("10.0.0.0/16", 31), ("10.0.0.0/16", 40)] {
            let err = PoolRange::new(cidr(base), size)
                .expect_err(base)
                .to_string();
            assert!(err.contains("cannot be split into"), "{err}");
        }
    }

    #[test]
    fn pick_subnet_takes_the_first_free_candidate() {
        let pool = default_pool();
        // (taken, expected)
        let cases: &[(&[&str], &str)] = &[
            (&[], "172.17.0.0/16"),
            (&["172.17.0.0/16"], "172.18.0.0/16"),
            (&["172.17.5.0/24"], "172.18.0.0/16"),
            (
                &["172.17.0.0/16", "172.18.0.0/16", "172.20.0.0/16"],
                "172.19.0.0/16",
            ),
            (&["172.16.0.0/12"], "192.168.0.0/20"),
            (&["172.16.0.0/12", "192.168.0.0/24"], "192.168.16.0/20"),
            (&["172.16.0.0/12", "192.168.0.0/17"], "192.168.128.0/20"),
            (&["0.0.0.0/1"], "172.17.0.0/16"),
            (&["10.0.0.0/8", "172.17.0.1/32"], "172.18.0.0/16"),
        ];
        for (taken, expected) in cases {
            let taken: Vec<Ipv4Cidr> = taken
                .iter()
                .map(|t| Ipv4Cidr::parse_host(t).expect("literal").1)
                .collect();
            assert_eq!(
                pick_subnet(&taken, &pool),
                Ok(cidr(expected)),
                "taken {taken:?}"
            );
        }
    }

    #[test]
    fn pick_subnet_reports_exhaustion() {
        let pool = default_pool();
        for taken in [
            vec![cidr("128.0.0.0/1")],
            vec![cidr("172.16.0.0/12"), cidr("192.168.0.0/16")],
            vec![cidr("0.0.0.0/0")],
        ] {
            let err = pick_subnet(&taken, &pool).expect_err("exhausted");
            assert_eq!(err, IpamError::PoolExhausted { candidates: 31 });
            assert!(
                err.to_string().contains("choose one with --subnet"),
                "{err}"
            );
        }
        assert!(matches!(
            pick_subnet(&[], &[]),
            Err(IpamError::PoolExhausted { candidates: 0 })
        ));
    }

    #[test]
    fn pick_subnet_is_fast_with_many_blockers() {
        // 2^22 candidate /30s in 10.0.0.0/8; every /24 but the last one taken, in reverse order.
        let pool = [PoolRange::new(cidr("10.0.0.0/8"), 30).expect("valid")];
        let mut taken: Vec<Ipv4Cidr> = (0..65535u32)
            .rev()
            .map(|n| Ipv4Cidr::containing(Ipv4Addr::from(u32::from(ip("10.0.0.0")) + (n << 8)), 24))
            .collect();
        assert_eq!(pick_subnet(&taken, &pool), Ok(cidr("10.255.255.0/30")));
        taken.extend(
            [
                "10.255.255.0/25",
                "10.255.255.128/26",
                "10.255.255.192/27",
                "10.255.255.224/28",
                "10.255.255.240/29",
                "10.255.255.248/30",
            ]
            .map(cidr),
        );
        assert_eq!(pick_subnet(&taken, &pool), Ok(cidr("10.255.255.252/30")));
        taken.push(cidr("10.255.255.252/30"));
        assert_eq!(
            pick_subnet(&taken, &pool),
            Err(IpamError::PoolExhausted {
                candidates: 1 << 22
            })
        );
    }

    #[test]
    fn check_overlap_names_the_network() {
        let existing = vec![
            ("bridge".to_string(), cidr("172.17.0.0/16")),
            ("web".to_string(), cidr("10.1.0.0/24")),
        ];
        assert_eq!(check_overlap(cidr("172.18.0.0/16"), &existing), Ok(()));
        assert_eq!(check_overlap(cidr("10.1.1.0/24"), &existing), Ok(()));
        let cases = [
            ("172.17.3.0/24", "bridge"),
            ("172.16.0.0/12", "bridge"),
            ("10.0.0.0/8", "web"),
            ("10.1.0.128/25", "web"),
        ];
        for (new, owner) in cases {
            let err = check_overlap(cidr(new), &existing)
                .expect_err(new)
                .to_string();
            assert!(
                err.starts_with(&format!("subnet {new} overlaps network {owner} (")),
                "{err}"
            );
            assert!(err.ends_with("choose another --subnet"), "{err}");
        }
    }

    #[test]
    fn default_gateway_is_the_first_host() {
        for (subnet, gw) in [
            ("172.17.0.0/16", "172.17.0.1"),
            ("10.0.0.4/30", "10.0.0.5"),
            ("10.0.0.4/31", "10.0.0.5"),
            ("10.0.0.4/32", "10.0.0.4"),
        ] {
            assert_eq!(default_gateway(cidr(subnet)), ip(gw), "{subnet}");
        }
    }

    #[test]
    fn validate_network_accepts_good_and_names_what_is_wrong() {
        assert_eq!(
            validate_network(&network("172.17.0.0/16", "172.17.0.1", None)),
            Ok(())
        );
        assert_eq!(
            validate_network(&network(
                "172.17.0.0/16",
                "172.17.255.254",
                Some("172.17.5.0/24")
            )),
            Ok(())
        );
        assert_eq!(
            validate_network(&network("10.0.0.0/30", "10.0.0.1", Some("10.0.0.0/30"))),
            Ok(())
        );
        // (mutate, expected fragment)
        type Mutation = fn(&mut Network);
        let cases: &[(Mutation, &str)] = &[
            (
                |n| {
                    n.subnet = Ipv4Cidr {
                        addr: ip("172.17.0.9"),
                        prefix: 16,
                    }
                },
                "has host bits set; use 172.17.0.0/16",
            ),
            (
                |n| n.subnet = cidr("172.17.0.0/31"),
                "is too small; use a prefix of /30 or shorter",
            ),
            (|n| n.subnet = cidr("172.17.0.1/32"), "is too small"),
            (
                |n| n.gateway = ip("172.18.0.1"),
                "gateway 172.18.0.1 is outside network web's subnet 172.17.0.0/16; use an address inside it, e.g. 172.17.0.1",
            ),
            (
                |n| n.gateway = ip("172.17.0.0"),
                "gateway 172.17.0.0 is the network address",
            ),
            (
                |n| n.gateway = ip("172.17.255.255"),
                "gateway 172.17.255.255 is the broadcast address",
            ),
            (
                |n| n.ip_range = Some(cidr("172.16.0.0/12")),
                "ip-range 172.16.0.0/12 of network web is not inside its subnet",
            ),
            (
                |n| n.ip_range = Some(cidr("10.0.0.0/24")),
                "is not inside its subnet",
            ),
            (|n| n.mtu = 67, "MTU 67 of network web is out of range"),
            (|n| n.mtu = 65536, "MTU 65536"),
            (|n| n.mtu = 0, "MTU 0"),
        ];
        for (mutate, expected) in cases {
            let mut net = network("172.17.0.0/16", "172.17.0.1", None);
            mutate(&mut net);
            let err = validate_network(&net).expect_err(expected).to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn allocates_the_lowest_free_address() {
        // (subnet, gateway, ip_range, used, expected)
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            ("172.17.0.0/16", "172.17.0.1", None, &[], "172.17.0.2"),
            (
                "172.17.0.0/16",
                "172.17.0.1",
                None,
                &["172.17.0.2", "172.17.0.3"],
                "172.17.0.4",
            ),
            (
                "172.17.0.0/16",
                "172.17.0.1",
                None,
                &["172.17.0.3"],
                "172.17.0.2",
            ),
            ("172.17.0.0/16", "172.17.0.5", None, &[], "172.17.0.1"),
            (
                "172.17.0.0/16",
                "172.17.0.1",
                Some("172.17.8.0/24"),
                &[],
                "172.17.8.0",
            ),
            (
                "172.17.0.0/16",
                "172.17.8.0",
                Some("172.17.8.0/24"),
                &["172.17.8.1"],
                "172.17.8.2",
            ),
            (
                "172.17.0.0/16",
                "172.17.0.1",
                Some("172.17.0.0/30"),
                &[],
                "172.17.0.2",
            ),
            ("10.0.0.0/30", "10.0.0.1", None, &[], "10.0.0.2"),
            // Used addresses outside the range do not matter.
            (
                "172.17.0.0/16",
                "172.17.0.1",
                Some("172.17.1.0/24"),
                &["172.17.0.2", "172.17.2.0"],
                "172.17.1.0",
            ),
        ];
        for (subnet, gw, range, taken, expected) in cases {
            let net = network(subnet, gw, *range);
            let used: BTreeMap<_, _> = taken.iter().map(|a| (ip(a), "x".to_string())).collect();
            assert_eq!(
                allocate_ip(&net, &used, None),
                Ok(ip(expected)),
                "{subnet} {range:?} {taken:?}"
            );
        }
    }

    #[test]
    fn allocation_reports_a_full_network() {
        let net = network("10.0.0.0/30", "10.0.0.1", None);
        let err = allocate_ip(&net, &used(&[("10.0.0.2", "a")]), None).expect_err("full");
        assert_eq!(
            err.to_string(),
            "network web has no free address left in 10.0.0.0/30; create a network with a larger --subnet (or --ip-range) for new endpoints"
        );
        // ip-range that only holds the subnet's broadcast address and the gateway.
        let net = network("10.0.0.0/24", "10.0.0.254", Some("10.0.0.254/31"));
        assert!(matches!(
            allocate_ip(&net, &BTreeMap::new(), None),
            Err(IpamError::Full { .. })
        ));
    }

    #[test]
    fn honours_a_valid_request() {
        let net = network("172.17.0.0/16", "172.17.0.1", Some("172.17.1.0/24"));
        let used = used(&[("172.17.1.5", "db")]);
        assert_eq!(
            allocate_ip(&net, &used, Some(ip("172.17.1.6"))),
            Ok(ip("172.17.1.6"))
        );
        assert_eq!(
            allocate_ip(&net, &used, Some(ip("172.17.1.0"))),
            Ok(ip("172.17.1.0"))
        );
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        let net = network("172.17.0.0/16", "172.17.0.1", None);
        let used = used(&[("172.17.0.2", "web")]);
        let cases = [
            (
                "172.17.0.2",
                "172.17.0.2 is already used by endpoint web; pick another address or leave --ip out",
            ),
            (
                "172.17.0.1",
                "172.17.0.1 is the gateway of network web; pick another address",
            ),
            (
                "172.17.0.0",
                "172.17.0.0 is the network address of network web (172.17.0.0/16); pick a host address",
            ),
            (
                "172.17.255.255",
                "172.17.255.255 is the broadcast address of network web",
            ),
            (
                "172.18.0.2",
                "172.18.0.2 is outside network web's subnet 172.17.0.0/16; pick an address inside it",
            ),
        ];
        for (requested, expected) in cases {
            let err = allocate_ip(&net, &used, Some(ip(requested)))
                .expect_err(requested)
                .to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} does not start with {expected:?}"
            );
        }
        let ranged = network("172.17.0.0/16", "172.17.0.1", Some("172.17.1.0/24"));
        assert_eq!(
            allocate_ip(&ranged, &used, Some(ip("172.17.2.9"))).unwrap(),
            ip("172.17.2.9"),
            "a static address outside the ip-range but inside the subnet is allowed"
        );
    }

    #[test]
    fn allocation_is_linear_on_a_crowded_slash_16() {
        let net = network("172.17.0.0/16", "172.17.0.1", None);
        // Every host address but the very last in use: the answer is found in one walk.
        let used: BTreeMap<Ipv4Addr, String> = (2..65534u32)
            .map(|n| {
                (
                    Ipv4Addr::from(u32::from(ip("172.17.0.0")) + n),
                    format!("ep{n}"),
                )
            })
            .collect();
        let start = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(allocate_ip(&net, &used, None), Ok(ip("172.17.255.254")));
        }
        // Generous bound (debug build, busy CI): an O(n^2) walk takes minutes here.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let mut full = used.clone();
        full.insert(ip("172.17.255.254"), "last".into());
        assert!(matches!(
            allocate_ip(&net, &full, None),
            Err(IpamError::Full { .. })
        ));
    }

    #[test]
    fn addresses_in_use_come_from_every_record_state() {
        let attachment = |network: &str, addr: &str, state| Attachment {
            network: network.into(),
            ip: ip(addr),
            mac: MacAddr::from_ipv4(ip(addr)),
            ifname: "eth0".into(),
            host_veth: "npv0".into(),
            state,
        };
        let endpoint = |name: &str, state, attachments| Endpoint {
            name: name.into(),
            mode: EndpointMode::Bridge,
            netns: PathBuf::from("/run/netns/x"),
            netns_owned: true,
            attachments,
            state,
            created: 0,
        };
        let endpoints = vec![
            endpoint(
                "a",
                Lifecycle::Ready,
                vec![
                    attachment("web", "172.18.0.2", Lifecycle::Ready),
                    attachment("bridge", "172.17.0.2", Lifecycle::Ready),
                ],
            ),
            endpoint(
                "b",
                Lifecycle::Creating,
                vec![attachment("web", "172.18.0.3", Lifecycle::Creating)],
            ),
            endpoint(
                "c",
                Lifecycle::Removing,
                vec![attachment("web", "172.18.0.4", Lifecycle::Removing)],
            ),
        ];
        assert_eq!(
            addresses_in_use("web", &endpoints),
            used(&[
                ("172.18.0.2", "a"),
                ("172.18.0.3", "b"),
                ("172.18.0.4", "c")
            ])
        );
        assert_eq!(
            addresses_in_use("bridge", &endpoints),
            used(&[("172.17.0.2", "a")])
        );
        assert!(addresses_in_use("other", &endpoints).is_empty());
    }
}
