//! Owns the host config file: a JSON object using Docker's daemon.json keys where they apply
//! (plus netpath's own keys), its validation, and what follows from it: the default network's
//! settings and the endpoints' resolv.conf.
//!
//! Keys: `bip`, `fixed-cidr`, `fixed-cidr-v6` (validated and kept, not used yet: netpath is
//! IPv4-only today), `mtu`, `default-gateway`, `dns`, `dns-search`, `dns-opts`, `bridge`,
//! `icc`, `ip`, `ip-masq`, and the netpath extensions `uplinks`, `nat-port-range` and
//! `published-port-range`.
//! Unknown keys are refused, as dockerd does, so a typo never passes silently.
use std::{
    fmt::Write as _,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::{
    addr::{self, Ipv4Cidr},
    ipam,
};

/// Why the host config could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}; check the path and its permissions", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("config file {} is not valid JSON ({source}); fix the syntax, see README 'Configuration'", path.display())]
    Syntax {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config file {} must hold one JSON object, e.g. {{\"bip\": \"172.18.0.1/16\"}}", path.display())]
    NotAnObject { path: PathBuf },
    #[error("unknown key(s) in {}: {keys}; see README 'Configuration'", path.display())]
    UnknownKeys { path: PathBuf, keys: String },
    #[error("config {origin}: \"{key}\": {reason}")]
    InvalidValue {
        origin: String,
        key: &'static str,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// Every key the file may hold.
pub const KNOWN_KEYS: &[&str] = &[
    "bip",
    "fixed-cidr",
    "fixed-cidr-v6",
    "mtu",
    "default-gateway",
    "dns",
    "dns-search",
    "dns-opts",
    "bridge",
    "icc",
    "ip",
    "ip-masq",
    "uplinks",
    "nat-port-range",
    "published-port-range",
];

/// Default network without `bip`, like docker0.
pub const DEFAULT_BIP: &str = "172.17.0.1/16";
/// Bridge device of the default network unless the config names an existing one.
pub const DEFAULT_BRIDGE: &str = "np0";
pub const DEFAULT_MTU: u32 = 1500;
/// Linux's default `ip_local_port_range`, so masqueraded flows look like local ones.
pub const DEFAULT_NAT_PORTS: PortRange = PortRange {
    first: 32768,
    last: 60999,
};
/// Host ports `-P` and publishes without a host port pick from: Linux's ephemeral range, as
/// Docker does.
pub const DEFAULT_PUBLISHED_PORTS: PortRange = PortRange {
    first: 32768,
    last: 60999,
};
/// Docker's fallback when the host has no usable nameserver.
const FALLBACK_NAMESERVERS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
];

/// `bip`: the default network's gateway address and subnet, written "172.18.0.1/16".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeIp {
    pub gateway: Ipv4Addr,
    pub subnet: Ipv4Cidr,
}

/// An inclusive range of ports, written "32768-60999".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// The host config, validated. `Default` is what an absent file means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// `bip`.
    pub bip: Option<BridgeIp>,
    /// `fixed-cidr`: addresses of the default network's endpoints come from here.
    pub fixed_cidr: Option<Ipv4Cidr>,
    /// `fixed-cidr-v6`, as written. Not used yet.
    pub fixed_cidr_v6: Option<String>,
    /// `mtu` of the default network and of new networks without `--mtu`.
    pub mtu: Option<u32>,
    /// `default-gateway`: endpoints of the default network route through this address
    /// instead of the bridge's.
    pub default_gateway: Option<Ipv4Addr>,
    /// `dns`: nameservers for endpoints' resolv.conf (IPv4 or IPv6).
    pub dns: Vec<IpAddr>,
    /// `dns-search`.
    pub dns_search: Vec<String>,
    /// `dns-opts`.
    pub dns_opts: Vec<String>,
    /// `bridge`: an existing device to use for the default network instead of creating np0.
    pub bridge: Option<String>,
    /// `icc` of the default network.
    pub icc: bool,
    /// `ip`: host address published ports bind to when the publish names none.
    pub default_host_ip: Ipv4Addr,
    /// `ip-masq` of the default network.
    pub ip_masq: bool,
    /// `uplinks` (netpath): interfaces that lead out of the host; empty means the interfaces
    /// holding default routes.
    pub uplinks: Vec<String>,
    /// `nat-port-range` (netpath): source ports masquerade may pick.
    pub nat_ports: PortRange,
    /// `published-port-range` (netpath): host ports for publishes that name none (`-P`,
    /// `-p 80`, `127.0.0.1::80`).
    pub published_ports: PortRange,
    /// File the config came from, named in later errors.
    origin: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            bip: None,
            fixed_cidr: None,
            fixed_cidr_v6: None,
            mtu: None,
            default_gateway: None,
            dns: Vec::new(),
            dns_search: Vec::new(),
            dns_opts: Vec::new(),
            bridge: None,
            icc: true,
            default_host_ip: Ipv4Addr::UNSPECIFIED,
            ip_masq: true,
            uplinks: Vec::new(),
            nat_ports: DEFAULT_NAT_PORTS,
            published_ports: DEFAULT_PUBLISHED_PORTS,
            origin: None,
        }
    }
}

/// What the default network `bridge` is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultNetworkSettings {
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Cidr>,
    pub mtu: u32,
    /// Device name.
    pub bridge: String,
    /// The device is the config's `bridge`: it exists already and netpath does not own it.
    pub bridge_external: bool,
    pub icc: bool,
    pub masquerade: bool,
}

impl HostConfig {
    /// Reads and validates the config file; the file must exist.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Like [`HostConfig::load`], but a missing file means the defaults.
    pub fn load_optional(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Validates config text; `origin` is the file it came from, for messages. Blank text is
    /// an empty config (a freshly `touch`ed file).
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self {
                origin: Some(origin.to_path_buf()),
                ..Self::default()
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|source| ConfigError::Syntax {
            path: origin.to_path_buf(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotAnObject {
                path: origin.to_path_buf(),
            });
        };
        let unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys {
                path: origin.to_path_buf(),
                keys: unknown.join(", "),
            });
        }
        let keys = Keys { map: &map, origin };

        let bip = keys
            .string("bip")?
            .map(|s| Ipv4Cidr::parse_host(&s).map_err(|e| keys.invalid("bip", e.to_string())))
            .transpose()?;
        let fixed_cidr = keys
            .string("fixed-cidr")?
            .map(|s| {
                s.parse::<Ipv4Cidr>()
                    .map_err(|e| keys.invalid("fixed-cidr", e.to_string()))
            })
            .transpose()?;
        let fixed_cidr_v6 = keys.string("fixed-cidr-v6")?;
        if let Some(v6) = &fixed_cidr_v6 {
            validate_ipv6_cidr(v6).map_err(|reason| keys.invalid("fixed-cidr-v6", reason))?;
        }
        // Range checked with the other settings at the end.
        let mtu = keys.typed::<u32>("mtu", "a whole number such as 1500")?;
        let default_gateway = keys.ipv4("default-gateway")?;
        let dns = keys
            .strings("dns")?
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| keys.invalid("dns", format!("{s:?} is not an IP address; list addresses such as \"1.1.1.1\" or \"2606:4700:4700::1111\"")))
            })
            .collect::<Result<Vec<_>>>()?;
        let dns_search = keys.strings("dns-search")?;
        for domain in &dns_search {
            if domain.is_empty()
                || domain.len() > 253
                || domain.contains(|c: char| c.is_whitespace() || c == '#' || c == ';')
            {
                return Err(keys.invalid(
                    "dns-search",
                    format!("{domain:?} is not a domain name; list names such as \"example.com\""),
                ));
            }
        }
        let dns_opts = keys.strings("dns-opts")?;
        for opt in &dns_opts {
            if opt.is_empty() || opt.contains(char::is_whitespace) {
                return Err(keys.invalid("dns-opts", format!("{opt:?} is not a resolv.conf option; list one option per string, e.g. \"ndots:2\"")));
            }
        }
        let bridge = keys.string("bridge")?;
        if let Some(dev) = &bridge {
            if dev == "none" {
                return Err(keys.invalid("bridge", "\"none\" (no default network) is not supported; name an existing bridge device or remove the key".into()));
            }
            validate_ifname(dev).map_err(|reason| keys.invalid("bridge", reason))?;
        }
        let icc = keys.typed::<bool>("icc", "true or false")?.unwrap_or(true);
        let default_host_ip = keys.ipv4("ip")?.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let ip_masq = keys
            .typed::<bool>("ip-masq", "true or false")?
            .unwrap_or(true);
        let uplinks = keys.strings("uplinks")?;
        for (i, name) in uplinks.iter().enumerate() {
            validate_ifname(name).map_err(|reason| keys.invalid("uplinks", reason))?;
            if uplinks[..i].contains(name) {
                return Err(keys.invalid(
                    "uplinks",
                    format!("{name} is listed twice; list each interface once"),
                ));
            }
        }
        let nat_ports = match keys.string("nat-port-range")? {
            Some(text) => {
                parse_port_range(&text).map_err(|reason| keys.invalid("nat-port-range", reason))?
            }
            None => DEFAULT_NAT_PORTS,
        };
        let published_ports = match keys.string("published-port-range")? {
            Some(text) => parse_port_range(&text)
                .map_err(|reason| keys.invalid("published-port-range", reason))?,
            None => DEFAULT_PUBLISHED_PORTS,
        };

        let config = Self {
            bip: bip.map(|(gateway, subnet)| BridgeIp { gateway, subnet }),
            fixed_cidr,
            fixed_cidr_v6,
            mtu,
            default_gateway,
            dns,
            dns_search,
            dns_opts,
            bridge,
            icc,
            default_host_ip,
            ip_masq,
            uplinks,
            nat_ports,
            published_ports,
            origin: Some(origin.to_path_buf()),
        };
        // Keys that only make sense together (bip, fixed-cidr, default-gateway) and the MTU
        // are checked now, so a bad file fails at load and not at the first endpoint.
        config.default_network_settings()?;
        Ok(config)
    }

    /// MTU for networks created without `--mtu`.
    pub fn mtu_or_default(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// (first, last) source port masquerade may use.
    pub fn nat_port_range(&self) -> (u16, u16) {
        (self.nat_ports.first, self.nat_ports.last)
    }

    /// (first, last) host port a publish without a host port may get.
    pub fn published_port_range(&self) -> (u16, u16) {
        (self.published_ports.first, self.published_ports.last)
    }

    /// Subnet, gateway, range, MTU, device and policy of the default network `bridge`.
    pub fn default_network_settings(&self) -> Result<DefaultNetworkSettings> {
        let (gateway, subnet) = match self.bip {
            Some(BridgeIp { gateway, subnet }) => (gateway, subnet),
            None => {
                Ipv4Cidr::parse_host(DEFAULT_BIP).map_err(|e| self.invalid("bip", e.to_string()))?
            }
        };
        let subnet_source = if self.bip.is_some() {
            "bip's subnet"
        } else {
            "the default subnet (set \"bip\" to change it)"
        };
        if subnet.prefix > ipam::MAX_SUBNET_PREFIX {
            return Err(self.invalid(
                "bip",
                format!("subnet {subnet} is too small; use a prefix of /{} or shorter, e.g. 172.18.0.1/16", ipam::MAX_SUBNET_PREFIX),
            ));
        }
        if gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(self.invalid(
                "bip",
                format!(
                    "{gateway}/{} names no host; write the bridge's own address, e.g. {}/{}",
                    subnet.prefix,
                    ipam::default_gateway(subnet),
                    subnet.prefix
                ),
            ));
        }
        if let Some(range) = self.fixed_cidr.filter(|r| !subnet.contains_subnet(r)) {
            return Err(self.invalid(
                "fixed-cidr",
                format!("{range} is not inside {subnet_source} {subnet}; pick a range inside it"),
            ));
        }
        let outside_hosts = |gw: &Ipv4Addr| {
            !subnet.contains(*gw) || *gw == subnet.network() || *gw == subnet.broadcast()
        };
        if let Some(gw) = self.default_gateway.filter(outside_hosts) {
            return Err(self.invalid(
                "default-gateway",
                format!(
                    "{gw} is not a host address in {subnet_source} {subnet}; pick one inside it"
                ),
            ));
        }
        if let Some(mtu) = self.mtu.filter(|m| !ipam::MTU_RANGE.contains(m)) {
            return Err(self.invalid(
                "mtu",
                format!("{mtu} is out of range; use a value from 68 to 65535 (usually 1500)"),
            ));
        }
        Ok(DefaultNetworkSettings {
            subnet,
            gateway,
            ip_range: self.fixed_cidr,
            mtu: self.mtu_or_default(),
            bridge: self
                .bridge
                .clone()
                .unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            bridge_external: self.bridge.is_some(),
            icc: self.icc,
            masquerade: self.ip_masq,
        })
    }

    /// resolv.conf for endpoints. Each of nameservers, search domains and options comes from
    /// the config when set there, else from the host's resolv.conf (`host_resolv`, its text).
    /// Host nameservers that cannot work inside an endpoint are dropped, as Docker does:
    /// loopback ones (the endpoint has its own loopback) and IPv6 ones (endpoints have IPv4
    /// only); with none left, Docker's fallback 8.8.8.8 and 8.8.4.4 is used.
    pub fn resolv_conf(&self, host_resolv: &str) -> String {
        let host = HostResolv::parse(host_resolv);
        let nameservers = if !self.dns.is_empty() {
            self.dns.clone()
        } else {
            let usable: Vec<IpAddr> = host
                .nameservers
                .into_iter()
                .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
                .collect();
            if usable.is_empty() {
                FALLBACK_NAMESERVERS.to_vec()
            } else {
                usable
            }
        };
        let search = if self.dns_search.is_empty() {
            host.search
        } else {
            self.dns_search.clone()
        };
        let options = if self.dns_opts.is_empty() {
            host.options
        } else {
            self.dns_opts.clone()
        };

        let mut out = String::from(
            "# Written by netpath; set \"dns\", \"dns-search\" or \"dns-opts\" in the host config to change it.\n",
        );
        for ns in nameservers {
            let _ = writeln!(out, "nameserver {ns}");
        }
        if !search.is_empty() {
            let _ = writeln!(out, "search {}", search.join(" "));
        }
        if !options.is_empty() {
            let _ = writeln!(out, "options {}", options.join(" "));
        }
        out
    }

    fn invalid(&self, key: &'static str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            origin: origin_name(self.origin.as_deref()),
            key,
            reason,
        }
    }
}

fn origin_name(origin: Option<&Path>) -> String {
    match origin {
        Some(path) => path.display().to_string(),
        None => "(built-in defaults)".to_string(),
    }
}

/// Typed access to the keys of the parsed object; every error names the key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    origin: &'a Path,
}

impl Keys<'_> {
    fn invalid(&self, key: &'static str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            origin: origin_name(Some(self.origin)),
            key,
            reason,
        }
    }

    /// The key's value as `T`; absent and `null` are `None`.
    fn typed<T: DeserializeOwned>(&self, key: &'static str, expected: &str) -> Result<Option<T>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|_| self.invalid(key, format!("expected {expected}, not {value}"))),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>> {
        self.typed(key, "a string")
    }

    fn strings(&self, key: &'static str) -> Result<Vec<String>> {
        Ok(self
            .typed(key, "a list of strings, e.g. [\"a\", \"b\"]")?
            .unwrap_or_default())
    }

    fn ipv4(&self, key: &'static str) -> Result<Option<Ipv4Addr>> {
        self.string(key)?
            .map(|s| addr::parse_ipv4(&s).map_err(|e| self.invalid(key, e.to_string())))
            .transpose()
    }
}

/// Linux's rule for device names (`dev_valid_name`).
fn validate_ifname(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid interface name; use 1 to 15 characters without '/', ':' or spaces, e.g. \"eth0\""
        ))
    }
}

fn validate_ipv6_cidr(text: &str) -> std::result::Result<(), String> {
    let hint = || {
        format!("{text:?} is not an IPv6 subnet; write ADDRESS/PREFIX, e.g. \"2001:db8:1::/64\"")
    };
    let (addr, prefix) = text.split_once('/').ok_or_else(hint)?;
    addr.parse::<Ipv6Addr>().map_err(|_| hint())?;
    let canonical =
        !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit());
    match prefix.parse::<u8>() {
        Ok(p) if canonical && p <= 128 => Ok(()),
        _ => Err(hint()),
    }
}

fn parse_port_range(text: &str) -> std::result::Result<PortRange, String> {
    let hint = || {
        format!(
            "{text:?} is not a port range; write FIRST-LAST with 1 <= FIRST <= LAST <= 65535, e.g. \"32768-60999\""
        )
    };
    let (first, last) = text.split_once('-').ok_or_else(hint)?;
    let port = |s: &str| -> std::result::Result<u16, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(hint());
        }
        s.parse::<u16>().map_err(|_| hint())
    };
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || first > last {
        return Err(hint());
    }
    Ok(PortRange { first, last })
}

/// The parts of the host's resolv.conf that endpoints inherit.
#[derive(Debug, Default, PartialEq, Eq)]
struct HostResolv {
    nameservers: Vec<IpAddr>,
    search: Vec<String>,
    options: Vec<String>,
}

impl HostResolv {
    /// resolver(5) semantics: the last `search`/`domain` line wins, `options` lines add up,
    /// `#` and `;` start comments; lines that do not parse are ignored, as the resolver does.
    fn parse(text: &str) -> Self {
        let mut parsed = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A zone suffix (fe80::1%eth0) marks a link-local server; it is IPv6 and
                    // dropped later anyway.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        parsed.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    parsed.search = words.map(str::to_string).collect()
                }
                Some("options") => parsed.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/netpath/config.json";

    fn parse(text: &str) -> Result<HostConfig> {
        HostConfig::parse(text, Path::new(ORIGIN))
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test literal")
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("test literal")
    }

    #[test]
    fn empty_config_is_the_default() {
        for text in ["", "  \n", "{}"] {
            let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                c,
                HostConfig {
                    origin: Some(ORIGIN.into()),
                    ..HostConfig::default()
                }
            );
        }
        let d = HostConfig::default();
        assert!(d.icc && d.ip_masq);
        assert_eq!(d.default_host_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.nat_port_range(), (32768, 60999));
        assert_eq!(d.published_port_range(), (32768, 60999));
        assert_eq!(d.mtu_or_default(), 1500);
    }

    #[test]
    fn reads_every_key() {
        let c = parse(
            r#"{
                "bip": "172.18.0.1/16",
                "fixed-cidr": "172.18.5.0/24",
                "fixed-cidr-v6": "2001:db8:1::/64",
                "mtu": 1450,
                "default-gateway": "172.18.0.254",
                "dns": ["1.1.1.1", "2606:4700:4700::1111"],
                "dns-search": ["example.com", "corp.example"],
                "dns-opts": ["ndots:2", "timeout:1"],
                "bridge": "br-lan",
                "icc": false,
                "ip": "192.168.1.10",
                "ip-masq": false,
                "uplinks": ["eth0", "wlan0"],
                "nat-port-range": "40000-50000",
                "published-port-range": "20000-20099"
            }"#,
        )
        .expect("valid config");
        assert_eq!(
            c.bip,
            Some(BridgeIp {
                gateway: ip("172.18.0.1"),
                subnet: cidr("172.18.0.0/16")
            })
        );
        assert_eq!(c.fixed_cidr, Some(cidr("172.18.5.0/24")));
        assert_eq!(c.fixed_cidr_v6.as_deref(), Some("2001:db8:1::/64"));
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.default_gateway, Some(ip("172.18.0.254")));
        assert_eq!(
            c.dns,
            vec![
                IpAddr::V4(ip("1.1.1.1")),
                "2606:4700:4700::1111".parse::<IpAddr>().expect("literal")
            ]
        );
        assert_eq!(c.dns_search, ["example.com", "corp.example"]);
        assert_eq!(c.dns_opts, ["ndots:2", "timeout:1"]);
        assert_eq!(c.bridge.as_deref(), Some("br-lan"));
        assert!(!c.icc && !c.ip_masq);
        assert_eq!(c.default_host_ip, ip("192.168.1.10"));
        assert_eq!(c.uplinks, ["eth0", "wlan0"]);
        assert_eq!(c.nat_port_range(), (40000, 50000));
        assert_eq!(c.published_port_range(), (20000, 20099));
        assert_eq!(
            c.default_network_settings().expect("valid"),
            DefaultNetworkSettings {
                subnet: cidr("172.18.0.0/16"),
                gateway: ip("172.18.0.1"),
                ip_range: Some(cidr("172.18.5.0/24")),
                mtu: 1450,
                bridge: "br-lan".into(),
                bridge_external: true,
                icc: false,
                masquerade: false,
            }
        );
    }

    #[test]
    fn default_network_without_config_is_like_docker0() {
        assert_eq!(
            HostConfig::default()
                .default_network_settings()
                .expect("valid"),
            DefaultNetworkSettings {
                subnet: cidr("172.17.0.0/16"),
                gateway: ip("172.17.0.1"),
                ip_range: None,
                mtu: 1500,
                bridge: "np0".into(),
                bridge_external: false,
                icc: true,
                masquerade: true,
            }
        );
    }

    #[test]
    fn null_means_absent() {
        let c = parse(r#"{"mtu": null, "dns": null, "icc": null}"#).expect("valid");
        assert_eq!((c.mtu, c.dns.len(), c.icc), (None, 0, true));
    }

    #[test]
    fn unknown_keys_are_listed() {
        let err = parse(r#"{"bip": "172.18.0.1/16", "storage-driver": "overlay2", "mut": 1500}"#)
            .expect_err("unknown")
            .to_string();
        assert_eq!(
            err,
            "unknown key(s) in /etc/netpath/config.json: mut, storage-driver; see README 'Configuration'"
        );
    }

    #[test]
    fn malformed_files_are_refused() {
        let cases = [
            ("{", "is not valid JSON"),
            ("{\"mtu\": 1500,}", "is not valid JSON"),
            ("// comment\n{}", "is not valid JSON"),
            ("[]", "must hold one JSON object"),
            ("\"bip\"", "must hold one JSON object"),
            ("null", "must hold one JSON object"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.starts_with("config file /etc/netpath/config.json"),
                "{err}"
            );
            assert!(
                err.contains(expected),
                "{text:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        // (text, key, expected fragment)
        let cases = [
            (r#"{"bip": "172.18.0.1"}"#, "bip", "has no prefix length"),
            (
                r#"{"bip": "172.18.0.0/16"}"#,
                "bip",
                "names no host; write the bridge's own address, e.g. 172.18.0.1/16",
            ),
            (r#"{"bip": "172.18.255.255/16"}"#, "bip", "names no host"),
            (r#"{"bip": "172.18.0.1/31"}"#, "bip", "is too small"),
            (r#"{"bip": "172.18.0.1/40"}"#, "bip", "prefix length \"40\""),
            (r#"{"bip": 17}"#, "bip", "expected a string, not 17"),
            (
                r#"{"fixed-cidr": "172.17.5.1/24"}"#,
                "fixed-cidr",
                "use 172.17.5.0/24",
            ),
            (
                r#"{"fixed-cidr": "10.0.0.0/24"}"#,
                "fixed-cidr",
                "10.0.0.0/24 is not inside the default subnet (set \"bip\" to change it) 172.17.0.0/16",
            ),
            (
                r#"{"bip": "172.18.0.1/16", "fixed-cidr": "172.17.0.0/24"}"#,
                "fixed-cidr",
                "is not inside bip's subnet 172.18.0.0/16",
            ),
            (
                r#"{"bip": "172.18.0.1/24", "fixed-cidr": "172.18.0.0/16"}"#,
                "fixed-cidr",
                "is not inside bip's subnet",
            ),
            (
                r#"{"fixed-cidr-v6": "2001:db8::"}"#,
                "fixed-cidr-v6",
                "is not an IPv6 subnet",
            ),
            (
                r#"{"fixed-cidr-v6": "2001:db8::/129"}"#,
                "fixed-cidr-v6",
                "is not an IPv6 subnet",
            ),
            (
                r#"{"fixed-cidr-v6": "10.0.0.0/8"}"#,
                "fixed-cidr-v6",
                "is not an IPv6 subnet",
            ),
            (
                r#"{"fixed-cidr-v6": "2001:db8::/+64"}"#,
                "fixed-cidr-v6",
                "is not an IPv6 subnet",
            ),
            (r#"{"mtu": 67}"#, "mtu", "67 is out of range"),
            (r#"{"mtu": 70000}"#, "mtu", "70000 is out of range"),
            (
                r#"{"mtu": -1}"#,
                "mtu",
                "expected a whole number such as 1500, not -1",
            ),
            (r#"{"mtu": "1500"}"#, "mtu", "expected a whole number"),
            (r#"{"mtu": 1500.5}"#, "mtu", "expected a whole number"),
            (
                r#"{"default-gateway": "172.17.0"}"#,
                "default-gateway",
                "is not an IPv4 address",
            ),
            (
                r#"{"default-gateway": "10.0.0.1"}"#,
                "default-gateway",
                "10.0.0.1 is not a host address in the default subnet",
            ),
            (
                r#"{"default-gateway": "172.17.0.0"}"#,
                "default-gateway",
                "is not a host address",
            ),
            (r#"{"dns": "1.1.1.1"}"#, "dns", "expected a list of strings"),
            (
                r#"{"dns": ["1.1.1.1", "dns.google"]}"#,
                "dns",
                "\"dns.google\" is not an IP address",
            ),
            (r#"{"dns": [1]}"#, "dns", "expected a list of strings"),
            (
                r#"{"dns-search": ["a b"]}"#,
                "dns-search",
                "is not a domain name",
            ),
            (
                r#"{"dns-search": [""]}"#,
                "dns-search",
                "is not a domain name",
            ),
            (
                r#"{"dns-opts": ["ndots: 2"]}"#,
                "dns-opts",
                "is not a resolv.conf option",
            ),
            (r#"{"bridge": "none"}"#, "bridge", "is not supported"),
            (
                r#"{"bridge": "a-very-long-bridge-name"}"#,
                "bridge",
                "is not a valid interface name",
            ),
            (
                r#"{"bridge": ""}"#,
                "bridge",
                "is not a valid interface name",
            ),
            (
                r#"{"bridge": "br/0"}"#,
                "bridge",
                "is not a valid interface name",
            ),
            (
                r#"{"icc": "yes"}"#,
                "icc",
                "expected true or false, not \"yes\"",
            ),
            (r#"{"ip-masq": 1}"#, "ip-masq", "expected true or false"),
            (r#"{"ip": "::"}"#, "ip", "is not an IPv4 address"),
            (
                r#"{"uplinks": ["eth0", "eth0"]}"#,
                "uplinks",
                "eth0 is listed twice",
            ),
            (
                r#"{"uplinks": ["eth 0"]}"#,
                "uplinks",
                "is not a valid interface name",
            ),
            (
                r#"{"nat-port-range": "60999-32768"}"#,
                "nat-port-range",
                "is not a port range",
            ),
            (
                r#"{"nat-port-range": "0-100"}"#,
                "nat-port-range",
                "is not a port range",
            ),
            (
                r#"{"nat-port-range": "1000"}"#,
                "nat-port-range",
                "is not a port range",
            ),
            (
                r#"{"nat-port-range": "1000-70000"}"#,
                "nat-port-range",
                "is not a port range",
            ),
            (
                r#"{"nat-port-range": "+1000-2000"}"#,
                "nat-port-range",
                "is not a port range",
            ),
            (
                r#"{"nat-port-range": [1000, 2000]}"#,
                "nat-port-range",
                "expected a string",
            ),
            (
                r#"{"published-port-range": "9000-8000"}"#,
                "published-port-range",
                "\"9000-8000\" is not a port range; write FIRST-LAST with 1 <= FIRST <= LAST <= 65535",
            ),
            (
                r#"{"published-port-range": "0-10"}"#,
                "published-port-range",
                "is not a port range",
            ),
        ];
        for (text, key, expected) in cases {
            let err = parse(text).expect_err(text).to_string();
            let prefix = format!("config /etc/netpath/config.json: \"{key}\": ");
            assert!(
                err.starts_with(&prefix),
                "{text}: {err:?} does not start with {prefix:?}"
            );
            assert!(err.contains(expected), "{text}: {err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn good_edge_values_pass() {
        for text in [
            r#"{"mtu": 68}"#,
            r#"{"mtu": 65535}"#,
            r#"{"nat-port-range": "1-65535"}"#,
            r#"{"nat-port-range": "5000-5000"}"#,
            r#"{"published-port-range": "8080-8080"}"#,
            r#"{"bip": "10.0.0.1/30", "fixed-cidr": "10.0.0.0/30", "default-gateway": "10.0.0.2"}"#,
            r#"{"fixed-cidr-v6": "::/0"}"#,
            r#"{"bridge": "abcdefghijklmno"}"#,
        ] {
            parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn load_and_load_optional() {
        let dir = std::env::temp_dir().join(format!("netpath-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.json");
        assert_eq!(
            HostConfig::load_optional(&missing).expect("optional"),
            HostConfig::default()
        );
        let err = HostConfig::load(&missing)
            .expect_err("required")
            .to_string();
        assert!(
            err.starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{err}"
        );

        let present = dir.join("config.json");
        std::fs::write(&present, r#"{"mtu": 9000}"#).expect("write");
        assert_eq!(HostConfig::load(&present).expect("load").mtu, Some(9000));
        assert_eq!(
            HostConfig::load_optional(&present).expect("load").mtu,
            Some(9000)
        );
        std::fs::write(&present, r#"{"mtu": 9}"#).expect("write");
        let err = HostConfig::load_optional(&present)
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains(&present.display().to_string()) && err.contains("\"mtu\""),
            "{err}"
        );
        // A directory is not "missing": the optional load must not hide it.
        assert!(HostConfig::load_optional(&dir).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    const HOST_RESOLV: &str = "\
# Generated by NetworkManager
search lan home.example
nameserver 127.0.0.53
nameserver 192.168.1.1 # router
nameserver ::1
nameserver fe80::1%eth0
nameserver 2001:4860:4860::8888
nameserver not-an-ip
; comment
options edns0
options trust-ad
";

    #[test]
    fn resolv_conf_inherits_usable_host_settings() {
        let out = HostConfig::default().resolv_conf(HOST_RESOLV);
        let body: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "nameserver 192.168.1.1",
                "search lan home.example",
                "options edns0 trust-ad"
            ]
        );
        assert!(out.starts_with("# Written by netpath"));
    }

    #[test]
    fn resolv_conf_falls_back_like_docker() {
        for host in [
            "nameserver 127.0.0.53\nsearch lan\n",
            "",
            "nameserver ::1\n",
        ] {
            let out = HostConfig::default().resolv_conf(host);
            let servers: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with("nameserver"))
                .collect();
            assert_eq!(
                servers,
                ["nameserver 8.8.8.8", "nameserver 8.8.4.4"],
                "{host:?}"
            );
        }
    }

    #[test]
    fn resolv_conf_config_overrides_each_part() {
        let c = parse(r#"{"dns": ["1.1.1.1", "2606:4700:4700::1111"], "dns-opts": ["ndots:2"]}"#)
            .expect("valid");
        let body: Vec<String> = c
            .resolv_conf(HOST_RESOLV)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        assert_eq!(
            body,
            [
                "nameserver 1.1.1.1",
                "nameserver 2606:4700:4700::1111",
                "search lan home.example",
                "options ndots:2"
            ]
        );
        let c = parse(r#"{"dns-search": ["corp.example"]}"#).expect("valid");
        let out = c.resolv_conf("domain old.example\nnameserver 10.0.0.53\n");
        assert!(
            out.contains("nameserver 10.0.0.53\nsearch corp.example\n") && !out.contains("options"),
            "{out}"
        );
    }

    #[test]
    fn host_resolv_last_search_or_domain_wins() {
        let parsed = HostResolv::parse("search a b\ndomain c\n");
        assert_eq!(parsed.search, ["c"]);
        let parsed = HostResolv::parse("domain c\nsearch a b\n");
        assert_eq!(parsed.search, ["a", "b"]);
    }
}
