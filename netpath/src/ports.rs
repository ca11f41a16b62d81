//! Owns published ports as data: the one parser for every way a port is published (`netpath
//! publish`, `endpoint create -p/-P/--expose`, `unpublish`, `port`), the plan that turns
//! requests plus the stored state into records (ranges, random host ports, conflicts), the
//! `NP_PORTS` entries records become, and `docker port`-style output. Everything here is pure;
//! `commands::publish` reads the host and the store and writes the kernel.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use netpath_common::{FAMILY_IPV4, PortKey, PublishedPort, addr_v4, map_size, port_flags};
use thiserror::Error;

use crate::{
    config::PortRange,
    model::{Endpoint, EndpointMode, Protocol, PublishedPortRecord},
};

/// How a `netpath publish` mapping is written (named in syntax errors).
pub const PUBLISH_FORM: &str = "[HOSTIP:][HOSTPORT[-END]]:CONTAINER:PORT[-END][/tcp|/udp], e.g. 8080:172.17.0.2:80, 127.0.0.1::web:5000/udp or [::1]:8080:172.17.0.2:80";
/// How `endpoint create -p` is written.
pub const DASH_P_FORM: &str =
    "[[HOSTIP:]HOSTPORT[-END]:]PORT[-END][/tcp|/udp], e.g. 8080:80, 127.0.0.1::5000/udp or :443";
/// How `--expose` and the PORT of `netpath port NAME PORT` are written.
pub const EXPOSE_FORM: &str = "PORT[-END][/tcp|/udp], e.g. 80 or 5000/udp";

/// Why a publish, unpublish or port query was refused. Every message is one line naming what
/// is wrong and what to do; nothing has been changed when one is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortsError {
    #[error("{spec:?} is not a published port; write {form}")]
    Syntax { spec: String, form: &'static str },
    #[error(
        "{spec:?}: {what} {text:?} is not a number; write a port from 1 to 65535 or a range such as 8000-8010"
    )]
    NotAPort {
        spec: String,
        what: &'static str,
        text: String,
    },
    #[error("{spec:?}: {what} {value} is out of range; use 1 to 65535")]
    PortOutOfRange {
        spec: String,
        what: &'static str,
        value: String,
    },
    #[error("{spec:?}: {what} range {first}-{last} is reversed; write {last}-{first}")]
    ReversedRange {
        spec: String,
        what: &'static str,
        first: u16,
        last: u16,
    },
    #[error(
        "{spec:?}: host ports {host} and container ports {container} differ in length; give both ranges the same length, or one container port with a host range"
    )]
    RangeLengths {
        spec: String,
        host: PortSpan,
        container: PortSpan,
    },
    #[error("{spec:?}: unknown protocol {proto:?}; use tcp or udp")]
    UnknownProtocol { spec: String, proto: String },
    #[error(
        "{spec:?}: host address {text:?} is not an IP address; write e.g. 127.0.0.1, or [::1] for IPv6"
    )]
    BadHostAddress { spec: String, text: String },
    #[error(
        "{spec:?}: container {text:?} is neither an IPv4 address nor an endpoint name; write e.g. 172.17.0.2 or web"
    )]
    BadTarget { spec: String, text: String },
    #[error(
        "{spec:?}: IPv6 is not served yet; publish on an IPv4 address such as 0.0.0.0 or 127.0.0.1"
    )]
    Ipv6NotServed { spec: String },
    #[error("{spec:?}: no endpoint has the address {ip}; check `netpath endpoint ls`")]
    UnknownContainerIp { spec: String, ip: Ipv4Addr },
    #[error("{spec:?}: endpoint {name} not found; check `netpath endpoint ls`")]
    UnknownEndpoint { spec: String, name: String },
    #[error(
        "{spec:?}: endpoint {name} has no interface of its own (--network {mode}); publish ports of a bridge-mode endpoint"
    )]
    EndpointWithoutAddress {
        spec: String,
        name: String,
        mode: String,
    },
    #[error(
        "{spec:?}: host address {ip} is not an address of this host; use one of its addresses, 0.0.0.0 or 127.0.0.1"
    )]
    HostAddressNotLocal { spec: String, ip: Ipv4Addr },
    #[error(
        "{host}/{protocol} is already published for {owner}; unpublish it first or choose another host port"
    )]
    AlreadyPublished {
        host: SocketAddr,
        protocol: Protocol,
        owner: String,
    },
    #[error(
        "{host}/{protocol} overlaps {existing}/{protocol}, already published for {owner}; unpublish that first or choose another host port"
    )]
    Overlaps {
        host: SocketAddr,
        existing: SocketAddr,
        protocol: Protocol,
        owner: String,
    },
    #[error(
        "{host}/{protocol} is in use by a socket on this host; stop that program or choose another host port"
    )]
    InUseOnHost {
        host: SocketAddr,
        protocol: Protocol,
    },
    #[error(
        "{spec:?}: no free host port in {first}-{last}/{protocol}; unpublish some or choose other ports"
    )]
    NoFreePort {
        spec: String,
        first: u16,
        last: u16,
        protocol: Protocol,
    },
    #[error(
        "publishing {adding} more port(s) would exceed the {max} entries NP_PORTS holds ({existing} in use); unpublish some first"
    )]
    TooMany {
        adding: usize,
        existing: usize,
        max: u32,
    },
    #[error("{spec:?}: nothing matching is published; see `netpath port --all`")]
    NotPublished { spec: String },
    #[error("{origin}: {source}")]
    At {
        origin: String,
        source: Box<PortsError>,
    },
}

impl PortsError {
    /// Prefixes the error with where the spec came from (e.g. `ports.txt line 3`).
    pub fn at(self, origin: Option<&str>) -> Self {
        match origin {
            Some(origin) => Self::At {
                origin: origin.to_string(),
                source: Box::new(self),
            },
            None => self,
        }
    }

    /// The error without its origin prefix (to classify it).
    pub fn innermost(&self) -> &Self {
        match self {
            Self::At { source, .. } => source.innermost(),
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, PortsError>;

/// An inclusive range of ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpan {
    pub first: u16,
    pub last: u16,
}

impl PortSpan {
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// Number of ports in the range.
    pub fn count(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_single(&self) -> bool {
        self.first == self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The container side of a mapping: an endpoint's address, or the endpoint itself (its first
/// interface).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(IpAddr),
    Endpoint(String),
}

/// One mapping as written, parsed but not yet checked against the host or the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The text as written, for messages.
    pub text: String,
    /// Where the text came from when not the command line (`FILE line N`), for messages.
    pub origin: Option<String>,
    /// `None`: the config's `ip` (default 0.0.0.0).
    pub host_ip: Option<IpAddr>,
    /// `None`: a free port from `published-port-range` for each container port.
    pub host_ports: Option<PortSpan>,
    pub target: Target,
    pub container_ports: PortSpan,
    pub protocol: Protocol,
}

/// One `:`-separated part of a spec; `[...]` (an IPv6 address) is one part without brackets.
struct Field<'a> {
    text: &'a str,
    bracketed: bool,
}

/// Splits at `:` outside brackets; `None` for unbalanced or misplaced brackets.
fn split_fields(s: &str) -> Option<Vec<Field<'_>>> {
    let mut fields = Vec::new();
    let mut rest = s;
    loop {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            fields.push(Field {
                text: &after[..end],
                bracketed: true,
            });
            let tail = &after[end + 1..];
            if tail.is_empty() {
                return Some(fields);
            }
            rest = tail.strip_prefix(':')?;
        } else {
            let (field, next) = match rest.find(':') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if field.contains(['[', ']']) {
                return None;
            }
            fields.push(Field {
                text: field,
                bracketed: false,
            });
            match next {
                Some(next) => rest = next,
                None => return Some(fields),
            }
        }
    }
}

fn split_protocol(spec: &str) -> Result<(&str, Protocol)> {
    let Some((body, proto)) = spec.rsplit_once('/') else {
        return Ok((spec, Protocol::Tcp));
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => {
            return Err(PortsError::UnknownProtocol {
                spec: spec.to_string(),
                proto: proto.to_string(),
            });
        }
    };
    Ok((body, protocol))
}

fn parse_port(spec: &str, what: &'static str, text: &str) -> Result<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortsError::NotAPort {
            spec: spec.to_string(),
            what,
            text: text.to_string(),
        });
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(PortsError::PortOutOfRange {
            spec: spec.to_string(),
            what,
            value: text.to_string(),
        }),
    }
}

/// `PORT` or `FIRST-LAST`.
fn parse_span(spec: &str, what: &'static str, text: &str) -> Result<PortSpan> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (parse_port(spec, what, a)?, parse_port(spec, what, b)?),
        None => {
            let p = parse_port(spec, what, text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(PortsError::ReversedRange {
            spec: spec.to_string(),
            what,
            first,
            last,
        });
    }
    Ok(PortSpan { first, last })
}

fn parse_host_ip(spec: &str, field: &Field<'_>) -> Result<Option<IpAddr>> {
    let bad = || PortsError::BadHostAddress {
        spec: spec.to_string(),
        text: field.text.to_string(),
    };
    if field.bracketed {
        return field
            .text
            .parse::<Ipv6Addr>()
            .map(|a| Some(IpAddr::V6(a)))
            .map_err(|_| bad());
    }
    if field.text.is_empty() {
        return Ok(None);
    }
    field
        .text
        .parse::<Ipv4Addr>()
        .map(|a| Some(IpAddr::V4(a)))
        .map_err(|_| bad())
}

/// Same rule as endpoint names (`endpoint::validate_name`).
fn is_endpoint_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn parse_target(spec: &str, field: &Field<'_>) -> Result<Target> {
    let bad = || PortsError::BadTarget {
        spec: spec.to_string(),
        text: field.text.to_string(),
    };
    if field.bracketed {
        return field
            .text
            .parse::<Ipv6Addr>()
            .map(|a| Target::Addr(IpAddr::V6(a)))
            .map_err(|_| bad());
    }
    if let Ok(a) = field.text.parse::<Ipv4Addr>() {
        return Ok(Target::Addr(IpAddr::V4(a)));
    }
    // Digits and dots only: a mistyped address, not a name.
    if field.text.bytes().all(|b| b.is_ascii_digit() || b == b'.') || !is_endpoint_name(field.text)
    {
        return Err(bad());
    }
    Ok(Target::Endpoint(field.text.to_string()))
}

/// Builds a spec from its parsed parts, checking what only the parts together tell.
fn finish(
    spec: &str,
    host_ip: Option<IpAddr>,
    host_ports: Option<&Field<'_>>,
    target: Target,
    container_ports: &Field<'_>,
    protocol: Protocol,
    form: &'static str,
) -> Result<PortSpec> {
    let syntax = || PortsError::Syntax {
        spec: spec.to_string(),
        form,
    };
    if container_ports.bracketed || host_ports.is_some_and(|f| f.bracketed) {
        return Err(syntax());
    }
    let host_ports = match host_ports {
        Some(f) if !f.text.is_empty() => Some(parse_span(spec, "host port", f.text)?),
        _ => None,
    };
    let container_ports = parse_span(spec, "container port", container_ports.text)?;
    if let Some(host) = host_ports {
        // Docker's rule: equal lengths map one to one; a host range for one container port
        // means "the first free port of the range".
        if host.count() != container_ports.count() && !container_ports.is_single() {
            return Err(PortsError::RangeLengths {
                spec: spec.to_string(),
                host,
                container: container_ports,
            });
        }
    }
    Ok(PortSpec {
        text: spec.to_string(),
        origin: None,
        host_ip,
        host_ports,
        target,
        container_ports,
        protocol,
    })
}

/// Parses `netpath publish`'s form: `[HOSTIP:][HOSTPORT[-END]]:CONTAINER:PORT[-END][/PROTO]`,
/// CONTAINER being an endpoint's IPv4 address or its name.
pub fn parse_publish(text: &str) -> Result<PortSpec> {
    let spec = text.trim();
    let syntax = || PortsError::Syntax {
        spec: spec.to_string(),
        form: PUBLISH_FORM,
    };
    let (body, protocol) = split_protocol(spec)?;
    let fields = split_fields(body).ok_or_else(syntax)?;
    let (host_ip, host_ports, target, container_ports) = match fields.as_slice() {
        [hp, t, cp] => (None, hp, t, cp),
        [ip, hp, t, cp] => (parse_host_ip(spec, ip)?, hp, t, cp),
        _ => return Err(syntax()),
    };
    if target.text.is_empty() && !target.bracketed {
        return Err(syntax());
    }
    let target = parse_target(spec, target)?;
    finish(
        spec,
        host_ip,
        Some(host_ports),
        target,
        container_ports,
        protocol,
        PUBLISH_FORM,
    )
}

/// Parses Docker's `-p` form for `endpoint`:
/// `[[HOSTIP:]HOSTPORT[-END]:]PORT[-END][/PROTO]`; `-p 80` takes a free host port.
pub fn parse_endpoint_publish(text: &str, endpoint: &str) -> Result<PortSpec> {
    let spec = text.trim();
    let syntax = || PortsError::Syntax {
        spec: spec.to_string(),
        form: DASH_P_FORM,
    };
    let (body, protocol) = split_protocol(spec)?;
    let fields = split_fields(body).ok_or_else(syntax)?;
    let (host_ip, host_ports, container_ports) = match fields.as_slice() {
        [cp] => (None, None, cp),
        [hp, cp] => (None, Some(hp), cp),
        [ip, hp, cp] => (parse_host_ip(spec, ip)?, Some(hp), cp),
        _ => return Err(syntax()),
    };
    finish(
        spec,
        host_ip,
        host_ports,
        Target::Endpoint(endpoint.to_string()),
        container_ports,
        protocol,
        DASH_P_FORM,
    )
}

/// Parses `--expose PORT[-END][/PROTO]` of `endpoint` as a publish on free host ports.
pub fn parse_expose(text: &str, endpoint: &str) -> Result<PortSpec> {
    let spec = text.trim();
    let (body, _) = split_protocol(spec)?;
    if body.contains([':', '[', ']']) {
        return Err(PortsError::Syntax {
            spec: spec.to_string(),
            form: EXPOSE_FORM,
        });
    }
    parse_endpoint_publish(spec, endpoint)
}

/// What `endpoint create NAME -p … -P --expose …` publishes: every `-p`, and with `-P` every
/// exposed port that no `-p` already publishes, each on a free host port. `--expose` without
/// `-P` is checked and otherwise only documentation, as in Docker.
pub fn endpoint_specs(
    endpoint: &str,
    publish: &[String],
    publish_all: bool,
    expose: &[String],
) -> Result<Vec<PortSpec>> {
    let mut specs = publish
        .iter()
        .map(|p| parse_endpoint_publish(p, endpoint))
        .collect::<Result<Vec<_>>>()?;
    let exposed = expose
        .iter()
        .map(|e| parse_expose(e, endpoint))
        .collect::<Result<Vec<_>>>()?;
    if publish_all {
        let covered = |port: u16, proto: Protocol, specs: &[PortSpec]| {
            specs
                .iter()
                .any(|s| s.protocol == proto && s.container_ports.contains(port))
        };
        for e in exposed {
            for port in e.container_ports.ports() {
                if !covered(port, e.protocol, &specs) {
                    specs.push(PortSpec {
                        container_ports: PortSpan::single(port),
                        ..e.clone()
                    });
                }
            }
        }
    }
    Ok(specs)
}

/// Parses the PORT[/PROTO] of `netpath port NAME PORT` (tcp when no protocol is given).
pub fn parse_port_filter(text: &str) -> Result<(u16, Protocol)> {
    let spec = text.trim();
    let (body, protocol) = split_protocol(spec)?;
    if body.contains([':', '-', '[', ']']) {
        return Err(PortsError::Syntax {
            spec: spec.to_string(),
            form: "PORT[/tcp|/udp], e.g. 80 or 5000/udp",
        });
    }
    Ok((parse_port(spec, "container port", body)?, protocol))
}

/// Sockets of the served namespace, from `/proc/net/{tcp,udp,tcp6,udp6}`: TCP in LISTEN state,
/// UDP bound to a port. A publish must not take a port one of them holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSockets {
    by_port: HashMap<(Protocol, u16), Vec<IpAddr>>,
}

/// `sk_state` of a listening TCP socket in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

impl HostSockets {
    /// From the text of the four files (an absent file is empty text).
    pub fn from_proc(tcp: &str, udp: &str, tcp6: &str, udp6: &str) -> Self {
        let mut sockets = Self::default();
        for (text, protocol) in [
            (tcp, Protocol::Tcp),
            (tcp6, Protocol::Tcp),
            (udp, Protocol::Udp),
            (udp6, Protocol::Udp),
        ] {
            let listening_only = protocol == Protocol::Tcp;
            for (ip, port) in parse_proc_net(text, listening_only) {
                sockets.add(protocol, ip, port);
            }
        }
        sockets
    }

    pub fn add(&mut self, protocol: Protocol, ip: IpAddr, port: u16) {
        self.by_port.entry((protocol, port)).or_default().push(ip);
    }

    /// Whether a socket holds what publishing `ip:port/protocol` needs: the same address,
    /// either side's wildcard, or an IPv6 wildcard or IPv4-mapped socket (dual stack).
    pub fn blocks(&self, protocol: Protocol, ip: Ipv4Addr, port: u16) -> bool {
        self.by_port
            .get(&(protocol, port))
            .is_some_and(|socks| socks.iter().any(|s| socket_blocks(*s, ip)))
    }
}

fn socket_blocks(socket: IpAddr, want: Ipv4Addr) -> bool {
    let v4 = match socket {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) if a.is_unspecified() => return true,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => a,
            None => return false,
        },
    };
    v4 == want || v4.is_unspecified() || want.is_unspecified()
}

/// (local address, local port) of each socket in a /proc/net/{tcp,udp}[6] table; with
/// `listening_only`, only sockets in TCP LISTEN state. Lines that do not parse are skipped.
pub fn parse_proc_net(text: &str, listening_only: bool) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if listening_only && state != TCP_LISTEN {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(ip), Ok(port)) = (proc_addr(addr), u16::from_str_radix(port, 16)) else {
            continue;
        };
        if port != 0 {
            out.push((ip, port));
        }
    }
    out
}

/// The kernel prints each 32-bit word of the address as a number in host byte order.
fn proc_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// What the host looks like to a publish, read once per command.
#[derive(Clone, Debug)]
pub struct HostView {
    /// IPv4 addresses of the served namespace.
    pub addresses: HashSet<Ipv4Addr>,
    pub sockets: HostSockets,
    /// `published-port-range`.
    pub random_ports: PortRange,
    /// The config's `ip`: host address of specs that name none.
    pub default_ip: Ipv4Addr,
}

/// A small xorshift generator: where a search for a free host port starts. Not for secrets.
#[derive(Clone, Debug)]
pub struct PortPicker(u64);

impl PortPicker {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A port of `range` for which `free` holds: a random start, then upwards (wrapping), so
    /// every port is tried once. `None` when none is free.
    pub fn pick(&mut self, range: PortRange, free: impl Fn(u16) -> bool) -> Option<u16> {
        let len = u64::from(range.last - range.first) + 1;
        let start = self.next() % len;
        (0..len)
            .map(|i| range.first + ((start + i) % len) as u16)
            .find(|p| free(*p))
    }
}

/// Who holds a host port: (host address, endpoint, container port).
type Claim = (IpAddr, String, u16);

/// Host ports already claimed (stored records and the batch so far), by (protocol, port).
struct Claims {
    by_port: HashMap<(Protocol, u16), Vec<Claim>>,
}

impl Claims {
    fn new(records: &[PublishedPortRecord]) -> Self {
        let mut claims = Self {
            by_port: HashMap::with_capacity(records.len()),
        };
        for r in records {
            claims.add(r);
        }
        claims
    }

    fn add(&mut self, r: &PublishedPortRecord) {
        self.by_port
            .entry((r.protocol, r.host_port))
            .or_default()
            .push((r.host_ip, r.endpoint.clone(), r.container_port));
    }

    /// Refuses a host port that is claimed at the same address, or where either address is
    /// the wildcard of the same family.
    fn check(&self, protocol: Protocol, host: SocketAddr) -> Result<()> {
        let Some(claims) = self.by_port.get(&(protocol, host.port())) else {
            return Ok(());
        };
        for (ip, endpoint, port) in claims {
            let owner = format!("{endpoint}:{port}");
            if *ip == host.ip() {
                return Err(PortsError::AlreadyPublished {
                    host,
                    protocol,
                    owner,
                });
            }
            if ip.is_ipv4() == host.is_ipv4() && (ip.is_unspecified() || host.ip().is_unspecified())
            {
                return Err(PortsError::Overlaps {
                    host,
                    existing: SocketAddr::new(*ip, host.port()),
                    protocol,
                    owner,
                });
            }
        }
        Ok(())
    }
}

/// Endpoints by address and by name: where a spec's container side goes.
struct Targets<'a> {
    by_ip: HashMap<Ipv4Addr, (&'a str, &'a str)>,
    by_name: HashMap<&'a str, &'a Endpoint>,
}

impl<'a> Targets<'a> {
    fn new(endpoints: &'a [Endpoint]) -> Self {
        let mut by_ip = HashMap::new();
        for ep in endpoints {
            for a in &ep.attachments {
                by_ip.insert(a.ip, (ep.name.as_str(), a.network.as_str()));
            }
        }
        Self {
            by_ip,
            by_name: endpoints.iter().map(|e| (e.name.as_str(), e)).collect(),
        }
    }

    /// (endpoint, network) the spec's traffic goes to.
    fn resolve(&self, spec: &PortSpec) -> Result<(String, String)> {
        match &spec.target {
            Target::Addr(IpAddr::V6(_)) => Err(PortsError::Ipv6NotServed {
                spec: spec.text.clone(),
            }),
            Target::Addr(IpAddr::V4(ip)) => self
                .by_ip
                .get(ip)
                .map(|(e, n)| (e.to_string(), n.to_string()))
                .ok_or(PortsError::UnknownContainerIp {
                    spec: spec.text.clone(),
                    ip: *ip,
                }),
            Target::Endpoint(name) => {
                let ep =
                    self.by_name
                        .get(name.as_str())
                        .ok_or_else(|| PortsError::UnknownEndpoint {
                            spec: spec.text.clone(),
                            name: name.clone(),
                        })?;
                match (&ep.mode, ep.attachments.first()) {
                    (EndpointMode::Bridge, Some(a)) => Ok((ep.name.clone(), a.network.clone())),
                    (mode, _) => Err(PortsError::EndpointWithoutAddress {
                        spec: spec.text.clone(),
                        name: name.clone(),
                        mode: mode.to_string(),
                    }),
                }
            }
        }
    }
}

/// The IPv4 host address of a spec, checked against the host: the wildcard and loopback are
/// always fine, anything else must be one of the host's addresses.
fn host_ip_of(spec: &PortSpec, host: &HostView) -> Result<Ipv4Addr> {
    match spec.host_ip.unwrap_or(IpAddr::V4(host.default_ip)) {
        IpAddr::V6(_) => Err(PortsError::Ipv6NotServed {
            spec: spec.text.clone(),
        }),
        IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => Ok(ip),
        IpAddr::V4(ip) if host.addresses.contains(&ip) => Ok(ip),
        IpAddr::V4(ip) => Err(PortsError::HostAddressNotLocal {
            spec: spec.text.clone(),
            ip,
        }),
    }
}

/// Most host ports a batch looks up by key; past that, reading every stored record is as cheap.
pub const KEYED_LOOKUP_LIMIT: usize = 4096;

/// The (protocol, host port) pairs whose stored records are all a plan of `specs` can conflict
/// with: the ports each spec names (every port of a range). `None` when that cannot be said
/// before planning — a spec without host port may try any port of `published-port-range` — or
/// when the batch names more than [`KEYED_LOOKUP_LIMIT`] ports; then the plan needs every
/// stored record.
pub fn ports_to_check(specs: &[PortSpec]) -> Option<Vec<(Protocol, u16)>> {
    let mut ports = std::collections::BTreeSet::new();
    for spec in specs {
        let span = spec.host_ports?;
        if ports.len() + span.count() > KEYED_LOOKUP_LIMIT {
            return None;
        }
        ports.extend(span.ports().map(|p| (spec.protocol, p)));
    }
    Some(ports.into_iter().collect())
}

/// What a plan needs to know of the stored records.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// At least every stored record on the (protocol, host port) pairs the batch may use
    /// ([`ports_to_check`]); every stored record will do.
    pub records: &'a [PublishedPortRecord],
    /// [`entries_needed`] of every stored record, for the `NP_PORTS` size check.
    pub entries: usize,
}

/// Turns a batch of specs into records, checked against the stored records (`existing`), each
/// other, the endpoints and the host. All or nothing: the first problem is the error.
/// `picker` chooses host ports for specs without one.
pub fn plan_publish(
    specs: &[PortSpec],
    existing: &[PublishedPortRecord],
    endpoints: &[Endpoint],
    host: &HostView,
    picker: &mut PortPicker,
) -> Result<Vec<PublishedPortRecord>> {
    let stored = Stored {
        records: existing,
        entries: entries_needed(existing),
    };
    plan_publish_among(specs, stored, endpoints, host, picker)
}

/// [`plan_publish`] given only the stored records a batch can conflict with (read by key) and
/// the entry count of all of them: one publish costs the same however many ports are stored.
pub fn plan_publish_among(
    specs: &[PortSpec],
    stored: Stored<'_>,
    endpoints: &[Endpoint],
    host: &HostView,
    picker: &mut PortPicker,
) -> Result<Vec<PublishedPortRecord>> {
    let targets = Targets::new(endpoints);
    let mut claims = Claims::new(stored.records);
    let mut planned = Vec::new();
    for spec in specs {
        plan_one(spec, &targets, &mut claims, host, picker, &mut planned)
            .map_err(|e| e.at(spec.origin.as_deref()))?;
    }
    let (existing_entries, adding) = (stored.entries, entries_needed(&planned));
    if existing_entries + adding > map_size::PORTS as usize {
        return Err(PortsError::TooMany {
            adding,
            existing: existing_entries,
            max: map_size::PORTS,
        });
    }
    Ok(planned)
}

fn plan_one(
    spec: &PortSpec,
    targets: &Targets<'_>,
    claims: &mut Claims,
    host: &HostView,
    picker: &mut PortPicker,
    planned: &mut Vec<PublishedPortRecord>,
) -> Result<()> {
    let ip = host_ip_of(spec, host)?;
    let (endpoint, network) = targets.resolve(spec)?;
    let protocol = spec.protocol;
    let free = |claims: &Claims, port: u16| {
        claims
            .check(protocol, SocketAddr::new(IpAddr::V4(ip), port))
            .is_ok()
            && !host.sockets.blocks(protocol, ip, port)
    };
    let mut pairs = Vec::with_capacity(spec.container_ports.count());
    match spec.host_ports {
        None => {
            for container_port in spec.container_ports.ports() {
                // Ports picked earlier in this loop are claimed already (added below).
                let port = picker
                    .pick(host.random_ports, |p| free(claims, p))
                    .ok_or_else(|| PortsError::NoFreePort {
                        spec: spec.text.clone(),
                        first: host.random_ports.first,
                        last: host.random_ports.last,
                        protocol,
                    })?;
                let record = record(ip, port, protocol, &endpoint, &network, container_port);
                claims.add(&record);
                pairs.push(record);
            }
        }
        Some(range) if range.count() > 1 && spec.container_ports.is_single() => {
            let port =
                range
                    .ports()
                    .find(|p| free(claims, *p))
                    .ok_or_else(|| PortsError::NoFreePort {
                        spec: spec.text.clone(),
                        first: range.first,
                        last: range.last,
                        protocol,
                    })?;
            let record = record(
                ip,
                port,
                protocol,
                &endpoint,
                &network,
                spec.container_ports.first,
            );
            claims.add(&record);
            pairs.push(record);
        }
        Some(range) => {
            for (port, container_port) in range.ports().zip(spec.container_ports.ports()) {
                let socket = SocketAddr::new(IpAddr::V4(ip), port);
                claims.check(protocol, socket)?;
                if host.sockets.blocks(protocol, ip, port) {
                    return Err(PortsError::InUseOnHost {
                        host: socket,
                        protocol,
                    });
                }
                let record = record(ip, port, protocol, &endpoint, &network, container_port);
                claims.add(&record);
                pairs.push(record);
            }
        }
    }
    planned.extend(pairs);
    Ok(())
}

fn record(
    ip: Ipv4Addr,
    host_port: u16,
    protocol: Protocol,
    endpoint: &str,
    network: &str,
    container_port: u16,
) -> PublishedPortRecord {
    PublishedPortRecord {
        host_ip: IpAddr::V4(ip),
        host_port,
        protocol,
        endpoint: endpoint.to_string(),
        network: network.to_string(),
        container_port,
    }
}

/// The stored records a batch of unpublish specs names (each must name at least one), in
/// order, without repeats. A spec without host address means the config's `ip`, as for
/// publish; without host port, any host port mapped to its container ports.
pub fn plan_unpublish(
    specs: &[PortSpec],
    existing: &[PublishedPortRecord],
    endpoints: &[Endpoint],
    default_ip: Ipv4Addr,
) -> Result<Vec<PublishedPortRecord>> {
    let targets = Targets::new(endpoints);
    let mut by_host: HashMap<(Protocol, u16), Vec<&PublishedPortRecord>> = HashMap::new();
    let mut by_container: HashMap<(&str, Protocol, u16), Vec<&PublishedPortRecord>> =
        HashMap::new();
    for r in existing {
        by_host
            .entry((r.protocol, r.host_port))
            .or_default()
            .push(r);
        by_container
            .entry((r.endpoint.as_str(), r.protocol, r.container_port))
            .or_default()
            .push(r);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for spec in specs {
        let matched = unpublish_one(spec, &targets, &by_host, &by_container, default_ip)
            .map_err(|e| e.at(spec.origin.as_deref()))?;
        for r in matched {
            if seen.insert(r.store_key()) {
                out.push(r.clone());
            }
        }
    }
    Ok(out)
}

fn unpublish_one<'r>(
    spec: &PortSpec,
    targets: &Targets<'_>,
    by_host: &HashMap<(Protocol, u16), Vec<&'r PublishedPortRecord>>,
    by_container: &HashMap<(&str, Protocol, u16), Vec<&'r PublishedPortRecord>>,
    default_ip: Ipv4Addr,
) -> Result<Vec<&'r PublishedPortRecord>> {
    let ip = match spec.host_ip.unwrap_or(IpAddr::V4(default_ip)) {
        IpAddr::V6(_) => {
            return Err(PortsError::Ipv6NotServed {
                spec: spec.text.clone(),
            });
        }
        IpAddr::V4(ip) => IpAddr::V4(ip),
    };
    // A name matches whatever network its records are on; an address names one attachment.
    let (endpoint, network) = match &spec.target {
        Target::Endpoint(name) => (name.clone(), None),
        Target::Addr(_) => {
            let (e, n) = targets.resolve(spec)?;
            (e, Some(n))
        }
    };
    let wanted = |r: &PublishedPortRecord| {
        r.host_ip == ip
            && r.endpoint == endpoint
            && network.as_ref().is_none_or(|n| *n == r.network)
            && spec.container_ports.contains(r.container_port)
    };
    let mut matched = Vec::new();
    match spec.host_ports {
        Some(range) => {
            let one_to_one = range.count() == spec.container_ports.count();
            for port in range.ports() {
                for r in by_host.get(&(spec.protocol, port)).into_iter().flatten() {
                    let paired = !one_to_one
                        || port - range.first == r.container_port - spec.container_ports.first;
                    if wanted(r) && paired {
                        matched.push(*r);
                    }
                }
            }
        }
        None => {
            for port in spec.container_ports.ports() {
                let key = (endpoint.as_str(), spec.protocol, port);
                matched.extend(
                    by_container
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter(|r| wanted(r)),
                );
            }
        }
    }
    if matched.is_empty() {
        return Err(PortsError::NotPublished {
            spec: spec.text.clone(),
        });
    }
    Ok(matched)
}

/// Where a record's endpoint is now: its address on the record's network and the ifindex of
/// that attachment's host-side veth (`None` while the veth is missing).
pub type Location = (Ipv4Addr, Option<u32>);

/// Locates a record with the stored endpoints and `ifindex_of` (device name -> index).
/// `None` when the endpoint or its attachment on the record's network is gone.
pub fn locate(
    record: &PublishedPortRecord,
    endpoints: &HashMap<&str, &Endpoint>,
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> Option<Location> {
    let ep = endpoints.get(record.endpoint.as_str())?;
    let att = ep
        .attachments
        .iter()
        .find(|a| a.network == record.network)?;
    Some((att.ip, ifindex_of(&att.host_veth)))
}

/// Published on a loopback address: reachable from the host's own sockets only.
pub fn is_host_only(record: &PublishedPortRecord) -> bool {
    matches!(record.host_ip, IpAddr::V4(a) if a.is_loopback())
}

/// The `NP_PORTS` key of a record; `None` for IPv6 (not served yet).
pub fn port_key(record: &PublishedPortRecord) -> Option<PortKey> {
    let IpAddr::V4(ip) = record.host_ip else {
        return None;
    };
    Some(PortKey {
        host_addr: addr_v4(ip.octets()),
        host_port: record.host_port.to_be_bytes(),
        protocol: record.protocol.number(),
        family: FAMILY_IPV4,
    })
}

/// A record's own `NP_PORTS` entry, its endpoint being at `endpoint_ip` behind the veth
/// `endpoint_ifindex`.
pub fn port_entry(
    record: &PublishedPortRecord,
    endpoint_ip: Ipv4Addr,
    endpoint_ifindex: u32,
) -> Option<(PortKey, PublishedPort)> {
    let key = port_key(record)?;
    let value = PublishedPort {
        endpoint_addr: addr_v4(endpoint_ip.octets()),
        endpoint_port: record.container_port.to_be_bytes(),
        family: FAMILY_IPV4,
        flags: if is_host_only(record) {
            port_flags::HOST_ONLY
        } else {
            0
        },
        endpoint_ifindex,
    };
    Some((key, value))
}

/// Key of the guard entry of an endpoint port ([`port_flags::GUARD`]): the endpoint's own
/// address and port, which no publish key can be (those are host addresses).
pub fn guard_key(endpoint_ip: Ipv4Addr, container_port: u16, protocol: Protocol) -> PortKey {
    PortKey {
        host_addr: addr_v4(endpoint_ip.octets()),
        host_port: container_port.to_be_bytes(),
        protocol: protocol.number(),
        family: FAMILY_IPV4,
    }
}

/// The guard entry netpath-common's recipe asks for while an endpoint port is published only
/// on loopback addresses: a LAN machine routing straight to the endpoint's address must not
/// reach a port the user meant for the host alone.
pub fn guard_entry(
    endpoint_ip: Ipv4Addr,
    container_port: u16,
    protocol: Protocol,
    endpoint_ifindex: u32,
) -> (PortKey, PublishedPort) {
    (
        guard_key(endpoint_ip, container_port, protocol),
        PublishedPort {
            endpoint_addr: addr_v4(endpoint_ip.octets()),
            endpoint_port: container_port.to_be_bytes(),
            family: FAMILY_IPV4,
            flags: port_flags::GUARD | port_flags::HOST_ONLY,
            endpoint_ifindex,
        },
    )
}

/// The endpoint port a record leads to (endpoint, network, port, protocol): guard entries
/// belong to endpoint ports, not to single records.
type EndpointPort<'r> = (&'r str, &'r str, u16, Protocol);

fn endpoint_port(r: &PublishedPortRecord) -> EndpointPort<'_> {
    (&r.endpoint, &r.network, r.container_port, r.protocol)
}

/// How many `NP_PORTS` entries `records` may need at most: one each, plus a guard for each
/// loopback one.
pub fn entries_needed<'r>(records: impl IntoIterator<Item = &'r PublishedPortRecord>) -> usize {
    records
        .into_iter()
        .map(|r| 1 + usize::from(is_host_only(r)))
        .sum()
}

/// Everything `NP_PORTS` must hold for `records`: each record's entry, and a guard entry for
/// every endpoint port published only on loopback addresses. Records `locate` cannot place,
/// or whose veth is missing, get no entries.
pub fn desired_entries<'r>(
    records: impl IntoIterator<Item = &'r PublishedPortRecord>,
    locate: impl Fn(&PublishedPortRecord) -> Option<Location>,
) -> Vec<(PortKey, PublishedPort)> {
    let mut out = Vec::new();
    // endpoint port -> (published only on loopback so far, where the endpoint is)
    let mut ports: std::collections::BTreeMap<EndpointPort<'r>, (bool, Option<Location>)> =
        Default::default();
    for r in records {
        let location = locate(r);
        if let Some((ip, Some(ifindex))) = location {
            out.extend(port_entry(r, ip, ifindex));
        }
        let entry = ports.entry(endpoint_port(r)).or_insert((true, location));
        entry.0 &= is_host_only(r);
    }
    for ((_, _, port, protocol), (only_loopback, location)) in ports {
        if let (true, Some((ip, Some(ifindex)))) = (only_loopback, location) {
            out.push(guard_entry(ip, port, protocol, ifindex));
        }
    }
    out
}

/// Whether `changed` shares an endpoint port with a loopback publish, its own or one of
/// `loopback` (the stored loopback records): only then can guard entries change, and
/// [`changes_after`] needs every stored record of those endpoint ports. Otherwise, after a
/// publish, `changed` alone gives [`changes_after`] the same answer as every stored record.
pub fn touches_guards(changed: &[PublishedPortRecord], loopback: &[PublishedPortRecord]) -> bool {
    let touched: HashSet<EndpointPort<'_>> = changed.iter().map(endpoint_port).collect();
    changed
        .iter()
        .chain(loopback)
        .any(|r| is_host_only(r) && touched.contains(&endpoint_port(r)))
}

/// The `NP_PORTS` updates after `changed` records were stored or deleted, `after` being every
/// record once the change is recorded: the changed records' own entries and the guard entries
/// of their endpoint ports, one update per key, without reading the map.
pub fn changes_after(
    changed: &[PublishedPortRecord],
    after: &[PublishedPortRecord],
    locate: impl Fn(&PublishedPortRecord) -> Option<Location>,
) -> Vec<PortChange> {
    let touched: HashSet<EndpointPort<'_>> = changed.iter().map(endpoint_port).collect();
    let desired = desired_entries(
        after.iter().filter(|r| touched.contains(&endpoint_port(r))),
        &locate,
    );
    let want: HashMap<[u8; 20], PublishedPort> = desired
        .into_iter()
        .map(|(k, v)| (key_bytes(&k), v))
        .collect();
    // Only an endpoint port with a loopback publish before or after can have or need a guard.
    let loopback: HashSet<EndpointPort<'_>> = changed
        .iter()
        .chain(after.iter().filter(|r| touched.contains(&endpoint_port(r))))
        .filter(|r| is_host_only(r))
        .map(endpoint_port)
        .collect();
    let mut keys: Vec<PortKey> = changed.iter().filter_map(port_key).collect();
    let mut guarded = HashSet::new();
    for r in changed {
        if loopback.contains(&endpoint_port(r))
            && let Some((ip, _)) = locate(r)
            && guarded.insert(endpoint_port(r))
        {
            keys.push(guard_key(ip, r.container_port, r.protocol));
        }
    }
    let mut seen = HashSet::new();
    keys.into_iter()
        .filter(|k| seen.insert(key_bytes(k)))
        .map(|k| match want.get(&key_bytes(&k)) {
            Some(v) => PortChange::Put(k, *v),
            None => PortChange::Remove(k),
        })
        .collect()
}

fn key_bytes(key: &PortKey) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(bytemuck::bytes_of(key));
    out
}

/// One change to `NP_PORTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortChange {
    Put(PortKey, PublishedPort),
    Remove(PortKey),
}

/// The changes that make `current` (the map now) equal `desired`: stale keys removed first,
/// then missing or different entries written.
pub fn diff_port_entries(
    current: &[(PortKey, PublishedPort)],
    desired: &[(PortKey, PublishedPort)],
) -> Vec<PortChange> {
    let want: HashMap<&[u8], &PublishedPort> = desired
        .iter()
        .map(|(k, v)| (bytemuck::bytes_of(k), v))
        .collect();
    let have: HashMap<&[u8], &PublishedPort> = current
        .iter()
        .map(|(k, v)| (bytemuck::bytes_of(k), v))
        .collect();
    let mut changes: Vec<PortChange> = current
        .iter()
        .filter(|(k, _)| !want.contains_key(bytemuck::bytes_of(k)))
        .map(|(k, _)| PortChange::Remove(*k))
        .collect();
    changes.extend(
        desired
            .iter()
            .filter(|(k, v)| have.get(bytemuck::bytes_of(k)) != Some(&v))
            .map(|(k, v)| PortChange::Put(*k, *v)),
    );
    changes
}

/// `docker port`'s line for a record: `80/tcp -> 0.0.0.0:8080` (`[::]:8080` for IPv6).
pub fn port_line(record: &PublishedPortRecord) -> String {
    format!(
        "{}/{} -> {}",
        record.container_port,
        record.protocol,
        record.host_socket()
    )
}

fn sorted<'r>(
    records: impl IntoIterator<Item = &'r PublishedPortRecord>,
) -> Vec<&'r PublishedPortRecord> {
    let mut v: Vec<_> = records.into_iter().collect();
    v.sort_by_key(|r| (r.container_port, r.protocol, r.host_ip, r.host_port));
    v
}

/// `netpath port NAME [PORT[/PROTO]]`, like `docker port`: without a filter one
/// `80/tcp -> 0.0.0.0:8080` line per mapping of `endpoint`; with one, only the host sides of
/// that container port (`0.0.0.0:8080`), or `None` when it is not published.
pub fn format_endpoint_ports(
    records: &[PublishedPortRecord],
    endpoint: &str,
    filter: Option<(u16, Protocol)>,
) -> Option<String> {
    let mine = sorted(records.iter().filter(|r| r.endpoint == endpoint));
    match filter {
        None => Some(mine.iter().map(|r| port_line(r) + "\n").collect()),
        Some((port, protocol)) => {
            let lines: String = mine
                .iter()
                .filter(|r| r.container_port == port && r.protocol == protocol)
                .map(|r| format!("{}\n", r.host_socket()))
                .collect();
            (!lines.is_empty()).then_some(lines)
        }
    }
}

/// `netpath port --all`: per endpoint with published ports (by name), a line with its name
/// and then its `docker port` lines indented by two spaces.
pub fn format_all_ports(records: &[PublishedPortRecord]) -> String {
    let mut names: Vec<&str> = records.iter().map(|r| r.endpoint.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    for name in names {
        out.push_str(name);
        out.push('\n');
        for r in sorted(records.iter().filter(|r| r.endpoint == name)) {
            out.push_str("  ");
            out.push_str(&port_line(r));
            out.push('\n');
        }
    }
    out
}

/// The specs of a `-f` file: one per line, `#` starts a comment, blank lines are skipped.
/// `name` is the file's name in messages (`-` for stdin).
pub fn parse_publish_file(name: &str, text: &str) -> Result<Vec<PortSpec>> {
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{name} line {}", i + 1);
        let mut spec = parse_publish(line).map_err(|e| e.at(Some(&origin)))?;
        spec.origin = Some(origin);
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        addr::MacAddr,
        model::{Attachment, Lifecycle},
    };

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("literal")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    fn endpoint(name: &str, ips: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            name: name.into(),
            mode: EndpointMode::Bridge,
            netns: PathBuf::from(format!("/run/netns/{name}")),
            netns_owned: true,
            attachments: ips
                .iter()
                .enumerate()
                .map(|(i, (net, a))| Attachment {
                    network: net.to_string(),
                    ip: v4(a),
                    mac: MacAddr::from_ipv4(v4(a)),
                    ifname: format!("eth{i}"),
                    host_veth: format!("npv-{name}-{i}"),
                    state: Lifecycle::Ready,
                })
                .collect(),
            state: Lifecycle::Ready,
            created: 0,
        }
    }

    fn endpoints() -> Vec<Endpoint> {
        let mut host = endpoint("hostnet", &[]);
        host.mode = EndpointMode::Host;
        vec![
            endpoint("web", &[("bridge", "172.17.0.2")]),
            endpoint("db", &[("bridge", "172.17.0.3"), ("back", "10.5.0.2")]),
            host,
        ]
    }

    fn host() -> HostView {
        HostView {
            addresses: [v4("10.77.0.1"), v4("192.168.1.10")].into_iter().collect(),
            sockets: HostSockets::default(),
            random_ports: PortRange {
                first: 32768,
                last: 60999,
            },
            default_ip: Ipv4Addr::UNSPECIFIED,
        }
    }

    fn rec(host: &str, port: u16, proto: Protocol, ep: &str, cport: u16) -> PublishedPortRecord {
        PublishedPortRecord {
            host_ip: ip(host),
            host_port: port,
            protocol: proto,
            endpoint: ep.into(),
            network: "bridge".into(),
            container_port: cport,
        }
    }

    fn spec(
        host_ip: Option<&str>,
        host_ports: Option<(u16, u16)>,
        target: Target,
        cports: (u16, u16),
        protocol: Protocol,
        text: &str,
    ) -> PortSpec {
        PortSpec {
            text: text.into(),
            origin: None,
            host_ip: host_ip.map(ip),
            host_ports: host_ports.map(|(first, last)| PortSpan { first, last }),
            target,
            container_ports: PortSpan {
                first: cports.0,
                last: cports.1,
            },
            protocol,
        }
    }

    fn at(s: &str) -> Target {
        Target::Addr(ip(s))
    }

    fn named(s: &str) -> Target {
        Target::Endpoint(s.into())
    }

    use Protocol::{Tcp, Udp};

    #[test]
    fn every_publish_form_parses() {
        let cases = [
            (
                "80:172.17.0.2:80",
                spec(None, Some((80, 80)), at("172.17.0.2"), (80, 80), Tcp, ""),
            ),
            (
                "127.0.0.1:5000:172.17.0.2:5000/udp",
                spec(
                    Some("127.0.0.1"),
                    Some((5000, 5000)),
                    at("172.17.0.2"),
                    (5000, 5000),
                    Udp,
                    "",
                ),
            ),
            (
                "127.0.0.1::172.17.0.2:5000",
                spec(
                    Some("127.0.0.1"),
                    None,
                    at("172.17.0.2"),
                    (5000, 5000),
                    Tcp,
                    "",
                ),
            ),
            (
                "8000-8010:172.17.0.2:80",
                spec(
                    None,
                    Some((8000, 8010)),
                    at("172.17.0.2"),
                    (80, 80),
                    Tcp,
                    "",
                ),
            ),
            (
                "8000-8001:172.17.0.2:80-81",
                spec(
                    None,
                    Some((8000, 8001)),
                    at("172.17.0.2"),
                    (80, 81),
                    Tcp,
                    "",
                ),
            ),
            (
                "8080:web:80/TCP",
                spec(None, Some((8080, 8080)), named("web"), (80, 80), Tcp, ""),
            ),
            (":web:80", spec(None, None, named("web"), (80, 80), Tcp, "")),
            (
                ":8080:172.17.0.2:80",
                spec(
                    None,
                    Some((8080, 8080)),
                    at("172.17.0.2"),
                    (80, 80),
                    Tcp,
                    "",
                ),
            ),
            (
                "0.0.0.0:8080:db.1:80/udp",
                spec(
                    Some("0.0.0.0"),
                    Some((8080, 8080)),
                    named("db.1"),
                    (80, 80),
                    Udp,
                    "",
                ),
            ),
            (
                "[::1]:8080:172.17.0.2:80",
                spec(
                    Some("::1"),
                    Some((8080, 8080)),
                    at("172.17.0.2"),
                    (80, 80),
                    Tcp,
                    "",
                ),
            ),
            (
                "[::]::[fd00::2]:80",
                spec(Some("::"), None, at("fd00::2"), (80, 80), Tcp, ""),
            ),
            (
                "  65535:172.17.0.2:1  ",
                spec(
                    None,
                    Some((65535, 65535)),
                    at("172.17.0.2"),
                    (1, 1),
                    Tcp,
                    "",
                ),
            ),
        ];
        for (text, mut expected) in cases {
            expected.text = text.trim().into();
            assert_eq!(parse_publish(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn every_dash_p_and_expose_form_parses() {
        let web = || named("web");
        let cases = [
            ("80", spec(None, None, web(), (80, 80), Tcp, "")),
            (
                "8080:80",
                spec(None, Some((8080, 8080)), web(), (80, 80), Tcp, ""),
            ),
            (
                "127.0.0.1::5000/udp",
                spec(Some("127.0.0.1"), None, web(), (5000, 5000), Udp, ""),
            ),
            (":443", spec(None, None, web(), (443, 443), Tcp, "")),
            (
                "192.168.1.10:8000-8010:80",
                spec(
                    Some("192.168.1.10"),
                    Some((8000, 8010)),
                    web(),
                    (80, 80),
                    Tcp,
                    "",
                ),
            ),
            (
                "7000-7001:70-71/udp",
                spec(None, Some((7000, 7001)), web(), (70, 71), Udp, ""),
            ),
            (
                "[::1]:8080:80",
                spec(Some("::1"), Some((8080, 8080)), web(), (80, 80), Tcp, ""),
            ),
            ("9000-9002", spec(None, None, web(), (9000, 9002), Tcp, "")),
        ];
        for (text, mut expected) in cases {
            expected.text = text.into();
            assert_eq!(parse_endpoint_publish(text, "web"), Ok(expected), "{text}");
        }
        let mut exposed = spec(None, None, web(), (53, 53), Udp, "53/udp");
        assert_eq!(parse_expose("53/udp", "web"), Ok(exposed.clone()));
        exposed.text = "8000-8002".into();
        exposed.container_ports = PortSpan {
            first: 8000,
            last: 8002,
        };
        exposed.protocol = Tcp;
        assert_eq!(parse_expose("8000-8002", "web"), Ok(exposed));
    }

    #[test]
    fn bad_input_is_refused_with_one_exact_line() {
        let publish = [
            (
                "0:172.17.0.2:80",
                "\"0:172.17.0.2:80\": host port 0 is out of range; use 1 to 65535",
            ),
            (
                "80:172.17.0.2:65536",
                "\"80:172.17.0.2:65536\": container port 65536 is out of range; use 1 to 65535",
            ),
            (
                "80:172.17.0.2:99999999999",
                "\"80:172.17.0.2:99999999999\": container port 99999999999 is out of range; use 1 to 65535",
            ),
            (
                "http:172.17.0.2:80",
                "\"http:172.17.0.2:80\": host port \"http\" is not a number; write a port from 1 to 65535 or a range such as 8000-8010",
            ),
            (
                "80:172.17.0.2:",
                "\"80:172.17.0.2:\": container port \"\" is not a number; write a port from 1 to 65535 or a range such as 8000-8010",
            ),
            (
                "8010-8000:172.17.0.2:80",
                "\"8010-8000:172.17.0.2:80\": host port range 8010-8000 is reversed; write 8000-8010",
            ),
            (
                "80:172.17.0.2:81-80",
                "\"80:172.17.0.2:81-80\": container port range 81-80 is reversed; write 80-81",
            ),
            (
                "8000-8002:172.17.0.2:80-81",
                "\"8000-8002:172.17.0.2:80-81\": host ports 8000-8002 and container ports 80-81 differ in length; give both ranges the same length, or one container port with a host range",
            ),
            (
                "8000:172.17.0.2:80-81",
                "\"8000:172.17.0.2:80-81\": host ports 8000 and container ports 80-81 differ in length; give both ranges the same length, or one container port with a host range",
            ),
            (
                "80:172.17.0.2:80/sctp",
                "\"80:172.17.0.2:80/sctp\": unknown protocol \"sctp\"; use tcp or udp",
            ),
            (
                "80:172.17.0.2:80/",
                "\"80:172.17.0.2:80/\": unknown protocol \"\"; use tcp or udp",
            ),
            (
                "localhost:80:172.17.0.2:80",
                "\"localhost:80:172.17.0.2:80\": host address \"localhost\" is not an IP address; write e.g. 127.0.0.1, or [::1] for IPv6",
            ),
            (
                "[::g]:80:172.17.0.2:80",
                "\"[::g]:80:172.17.0.2:80\": host address \"::g\" is not an IP address; write e.g. 127.0.0.1, or [::1] for IPv6",
            ),
            (
                "80:172.17.0.256:80",
                "\"80:172.17.0.256:80\": container \"172.17.0.256\" is neither an IPv4 address nor an endpoint name; write e.g. 172.17.0.2 or web",
            ),
            (
                "80:we b:80",
                "\"80:we b:80\": container \"we b\" is neither an IPv4 address nor an endpoint name; write e.g. 172.17.0.2 or web",
            ),
        ];
        let form = PUBLISH_FORM;
        let syntax = [
            "172.17.0.2:80",
            "80",
            "",
            "1.2.3.4:80:172.17.0.2:80:9",
            "::1:8080:172.17.0.2:80",
            "[::1:8080:172.17.0.2:80",
            "[::1]x:8080:172.17.0.2:80",
            "80::80",
            "[::1]:172.17.0.2:80",
            "80:172.17.0.2:[80]",
        ];
        for (text, expected) in publish {
            let err = parse_publish(text).expect_err(text).to_string();
            assert_eq!(err, expected, "{text}");
        }
        for text in syntax {
            let err = parse_publish(text).expect_err(text).to_string();
            assert_eq!(
                err,
                format!("{text:?} is not a published port; write {form}"),
                "{text}"
            );
        }
        let dash_p = [
            (
                "1.2.3.4:80:80:80",
                format!("\"1.2.3.4:80:80:80\" is not a published port; write {DASH_P_FORM}"),
            ),
            (
                "80:0",
                "\"80:0\": container port 0 is out of range; use 1 to 65535".into(),
            ),
            (
                "80-81",
                // A single -p container range is fine; its host side is random.
                String::new(),
            ),
            (
                "80-81:80-82",
                "\"80-81:80-82\": host ports 80-81 and container ports 80-82 differ in length; give both ranges the same length, or one container port with a host range".into(),
            ),
        ];
        for (text, expected) in dash_p {
            match parse_endpoint_publish(text, "web") {
                Ok(_) => assert!(expected.is_empty(), "{text} parsed"),
                Err(e) => assert_eq!(e.to_string(), expected, "{text}"),
            }
        }
        assert_eq!(
            parse_expose("8080:80", "web")
                .expect_err("not expose")
                .to_string(),
            format!("\"8080:80\" is not a published port; write {EXPOSE_FORM}")
        );
        assert_eq!(
            parse_port_filter("80-81").expect_err("range").to_string(),
            "\"80-81\" is not a published port; write PORT[/tcp|/udp], e.g. 80 or 5000/udp"
        );
        assert_eq!(parse_port_filter("53/udp"), Ok((53, Udp)));
        assert_eq!(parse_port_filter("80"), Ok((80, Tcp)));
    }

    #[test]
    fn dash_p_and_expose_make_the_endpoint_specs() {
        let specs = endpoint_specs(
            "web",
            &["8080:80".into(), "127.0.0.1::5000/udp".into()],
            true,
            &["80".into(), "5000/udp".into(), "9000-9001".into()],
        )
        .expect("valid");
        let got: Vec<(Option<PortSpan>, PortSpan, Protocol)> = specs
            .iter()
            .map(|s| (s.host_ports, s.container_ports, s.protocol))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(PortSpan::single(8080)), PortSpan::single(80), Tcp),
                (None, PortSpan::single(5000), Udp),
                // -P: 80/tcp and 5000/udp are published by -p already.
                (None, PortSpan::single(9000), Tcp),
                (None, PortSpan::single(9001), Tcp),
            ]
        );
        let without_p = endpoint_specs("web", &[], false, &["80".into()]).expect("valid");
        assert!(without_p.is_empty(), "--expose alone publishes nothing");
        assert!(endpoint_specs("web", &[], true, &["80:80".into()]).is_err());
    }

    #[test]
    fn ranges_expand_one_record_per_port() {
        let mut picker = PortPicker::new(7);
        let specs = [
            parse_publish("8000-8002:172.17.0.2:80-82/udp").expect("valid"),
            parse_publish("127.0.0.1:9000:db:5432").expect("valid"),
        ];
        let got = plan_publish(&specs, &[], &endpoints(), &host(), &mut picker).expect("plan");
        assert_eq!(
            got,
            vec![
                rec("0.0.0.0", 8000, Udp, "web", 80),
                rec("0.0.0.0", 8001, Udp, "web", 81),
                rec("0.0.0.0", 8002, Udp, "web", 82),
                rec("127.0.0.1", 9000, Tcp, "db", 5432),
            ]
        );
        // An address on a second network names that attachment.
        let got = plan_publish(
            &[parse_publish("8080:10.5.0.2:80").expect("valid")],
            &[],
            &endpoints(),
            &host(),
            &mut picker,
        )
        .expect("plan");
        assert_eq!(got[0].network, "back");
        assert_eq!(got[0].endpoint, "db");
    }

    #[test]
    fn a_host_range_for_one_port_takes_its_first_free_port() {
        let existing = [rec("0.0.0.0", 8000, Tcp, "db", 1)];
        let mut sockets = HostSockets::default();
        sockets.add(Tcp, ip("127.0.0.1"), 8001);
        let host = HostView { sockets, ..host() };
        let specs = [parse_publish("8000-8010:172.17.0.2:80").expect("valid")];
        let got = plan_publish(
            &specs,
            &existing,
            &endpoints(),
            &host,
            &mut PortPicker::new(1),
        )
        .expect("plan");
        assert_eq!(got, vec![rec("0.0.0.0", 8002, Tcp, "web", 80)]);
        // Full range: named in the error.
        let specs = [parse_publish("8000-8001:172.17.0.2:80").expect("valid")];
        let err = plan_publish(
            &specs,
            &existing,
            &endpoints(),
            &host,
            &mut PortPicker::new(1),
        )
        .expect_err("full");
        assert_eq!(
            err.to_string(),
            "\"8000-8001:172.17.0.2:80\": no free host port in 8000-8001/tcp; unpublish some or choose other ports"
        );
    }

    #[test]
    fn random_ports_avoid_taken_ones() {
        let range = PortRange {
            first: 100,
            last: 104,
        };
        let taken = [100u16, 101, 103, 104];
        for seed in 0..50 {
            let mut picker = PortPicker::new(seed);
            assert_eq!(picker.pick(range, |p| !taken.contains(&p)), Some(102));
            assert_eq!(picker.pick(range, |_| false), None);
        }
        // Different seeds spread over the range.
        let picks: HashSet<u16> = (0..50)
            .map(|seed| {
                PortPicker::new(seed)
                    .pick(range, |_| true)
                    .expect("all free")
            })
            .collect();
        assert!(picks.len() > 1, "always the same port: {picks:?}");

        // Through the planner: stored records, host sockets and the batch itself are avoided.
        let existing = [
            rec("0.0.0.0", 40000, Tcp, "db", 1),
            rec("127.0.0.1", 40002, Tcp, "db", 2),
        ];
        let mut sockets = HostSockets::default();
        sockets.add(Tcp, ip("0.0.0.0"), 40001);
        let host = HostView {
            sockets,
            random_ports: PortRange {
                first: 40000,
                last: 40004,
            },
            ..host()
        };
        let specs = [parse_endpoint_publish("80-81", "web").expect("valid")];
        let got = plan_publish(
            &specs,
            &existing,
            &endpoints(),
            &host,
            &mut PortPicker::new(3),
        )
        .expect("plan");
        let ports: HashSet<u16> = got.iter().map(|r| r.host_port).collect();
        assert_eq!(ports, [40003, 40004].into_iter().collect());
        let specs = [parse_endpoint_publish("80-82", "web").expect("valid")];
        let err = plan_publish(
            &specs,
            &existing,
            &endpoints(),
            &host,
            &mut PortPicker::new(3),
        )
        .expect_err("only two free");
        assert_eq!(
            err.to_string(),
            "\"80-82\": no free host port in 40000-40004/tcp; unpublish some or choose other ports"
        );
    }

    #[test]
    fn conflicts_name_the_owner_exact_and_wildcard() {
        let existing = [
            rec("0.0.0.0", 8080, Tcp, "web", 80),
            rec("127.0.0.1", 9090, Tcp, "db", 90),
        ];
        let plan = |text: &str| {
            plan_publish(
                &[parse_publish(text).expect("valid")],
                &existing,
                &endpoints(),
                &host(),
                &mut PortPicker::new(1),
            )
        };
        let cases = [
            (
                "8080:172.17.0.3:80",
                "0.0.0.0:8080/tcp is already published for web:80; unpublish it first or choose another host port",
            ),
            (
                "127.0.0.1:8080:172.17.0.3:80",
                "127.0.0.1:8080/tcp overlaps 0.0.0.0:8080/tcp, already published for web:80; unpublish that first or choose another host port",
            ),
            (
                "9090:172.17.0.2:80",
                "0.0.0.0:9090/tcp overlaps 127.0.0.1:9090/tcp, already published for db:90; unpublish that first or choose another host port",
            ),
            (
                "127.0.0.1:9090:172.17.0.2:80",
                "127.0.0.1:9090/tcp is already published for db:90; unpublish it first or choose another host port",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(plan(text).expect_err(text).to_string(), expected, "{text}");
        }
        // Other protocol, other specific address: no conflict.
        assert!(plan("8080:172.17.0.3:80/udp").is_ok());
        assert!(plan("192.168.1.10:9090:172.17.0.2:80").is_ok());
        // Inside one batch, the second claim loses.
        let specs = [
            parse_publish("7000:web:80").expect("valid"),
            parse_publish("7000:db:80").expect("valid"),
        ];
        let err = plan_publish(&specs, &[], &endpoints(), &host(), &mut PortPicker::new(1))
            .expect_err("twice");
        assert_eq!(
            err.to_string(),
            "0.0.0.0:7000/tcp is already published for web:80; unpublish it first or choose another host port"
        );
    }

    #[test]
    fn listening_host_sockets_block_their_ports() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F91 0200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0A01A8C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
";
        let tcp6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000
   2: 00000000000000000000000001000000:1F94 00000000000000000000000000000000:0000 0A 00000000:00000000
";
        if cfg!(target_endian = "big") {
            return; // the sample text is what a little-endian kernel prints
        }
        assert_eq!(
            parse_proc_net(tcp, true),
            vec![(ip("127.0.0.1"), 8080), (ip("0.0.0.0"), 22)]
        );
        assert_eq!(parse_proc_net(udp, false), vec![(ip("192.168.1.10"), 53)]);
        assert_eq!(
            parse_proc_net(tcp6, true),
            vec![
                (ip("::"), 8082),
                (ip("::ffff:127.0.0.1"), 8083),
                (ip("::1"), 8084)
            ]
        );
        let s = HostSockets::from_proc(tcp, udp, tcp6, "");
        let lo = v4("127.0.0.1");
        let any = Ipv4Addr::UNSPECIFIED;
        assert!(s.blocks(Tcp, lo, 8080), "same address");
        assert!(
            s.blocks(Tcp, any, 8080),
            "wildcard publish over a specific listener"
        );
        assert!(!s.blocks(Tcp, v4("10.77.0.1"), 8080), "other address");
        assert!(s.blocks(Tcp, v4("10.77.0.1"), 22), "wildcard listener");
        assert!(!s.blocks(Tcp, lo, 8081), "connected, not listening");
        assert!(!s.blocks(Udp, lo, 8080), "other protocol");
        assert!(s.blocks(Udp, any, 53) && s.blocks(Udp, v4("192.168.1.10"), 53));
        assert!(s.blocks(Tcp, lo, 8082), "dual-stack [::] listener");
        assert!(s.blocks(Tcp, lo, 8083) && !s.blocks(Tcp, v4("10.77.0.1"), 8083));
        assert!(!s.blocks(Tcp, lo, 8084), "IPv6-only address");

        let host = HostView {
            sockets: s,
            ..host()
        };
        let err = plan_publish(
            &[parse_publish("127.0.0.1:8080:172.17.0.2:80").expect("valid")],
            &[],
            &endpoints(),
            &host,
            &mut PortPicker::new(1),
        )
        .expect_err("in use");
        assert_eq!(
            err.to_string(),
            "127.0.0.1:8080/tcp is in use by a socket on this host; stop that program or choose another host port"
        );
    }

    #[test]
    fn targets_and_host_addresses_are_checked() {
        let plan = |text: &str| {
            plan_publish(
                &[parse_publish(text).expect("valid")],
                &[],
                &endpoints(),
                &host(),
                &mut PortPicker::new(1),
            )
        };
        let cases = [
            (
                "80:172.17.0.99:80",
                "\"80:172.17.0.99:80\": no endpoint has the address 172.17.0.99; check `netpath endpoint ls`",
            ),
            (
                "80:cache:80",
                "\"80:cache:80\": endpoint cache not found; check `netpath endpoint ls`",
            ),
            (
                "80:hostnet:80",
                "\"80:hostnet:80\": endpoint hostnet has no interface of its own (--network host); publish ports of a bridge-mode endpoint",
            ),
            (
                "10.0.0.9:80:172.17.0.2:80",
                "\"10.0.0.9:80:172.17.0.2:80\": host address 10.0.0.9 is not an address of this host; use one of its addresses, 0.0.0.0 or 127.0.0.1",
            ),
            (
                "[::1]:8080:172.17.0.2:80",
                "\"[::1]:8080:172.17.0.2:80\": IPv6 is not served yet; publish on an IPv4 address such as 0.0.0.0 or 127.0.0.1",
            ),
            (
                "8080:[fd00::2]:80",
                "\"8080:[fd00::2]:80\": IPv6 is not served yet; publish on an IPv4 address such as 0.0.0.0 or 127.0.0.1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(plan(text).expect_err(text).to_string(), expected, "{text}");
        }
        for ok in [
            "127.8.9.10:80:172.17.0.2:80",
            "192.168.1.10:80:172.17.0.2:80",
            "0.0.0.0:80:172.17.0.2:80",
        ] {
            assert!(plan(ok).is_ok(), "{ok}");
        }
        // The config's `ip` stands in for a missing host address.
        let h = HostView {
            default_ip: v4("192.168.1.10"),
            ..host()
        };
        let got = plan_publish(
            &[parse_publish("80:web:80").expect("valid")],
            &[],
            &endpoints(),
            &h,
            &mut PortPicker::new(1),
        )
        .expect("plan");
        assert_eq!(got[0].host_ip, ip("192.168.1.10"));
    }

    #[test]
    fn a_file_batch_names_the_bad_line_and_plans_nothing() {
        let text = "# web\n8080:web:80\n\n  8443:web:443/tcp # tls\n9000:db:0\n";
        let err = parse_publish_file("ports.txt", text).expect_err("line 5");
        assert_eq!(
            err.to_string(),
            "ports.txt line 5: \"9000:db:0\": container port 0 is out of range; use 1 to 65535"
        );
        let specs =
            parse_publish_file("-", "8080:web:80\n8443:web:443\n8080:db:80\n").expect("parses");
        assert_eq!(specs[1].origin.as_deref(), Some("- line 2"));
        let err = plan_publish(&specs, &[], &endpoints(), &host(), &mut PortPicker::new(1))
            .expect_err("line 3 conflicts");
        assert_eq!(
            err.to_string(),
            "- line 3: 0.0.0.0:8080/tcp is already published for web:80; unpublish it first or choose another host port"
        );
        assert!(matches!(
            err.innermost(),
            PortsError::AlreadyPublished { .. }
        ));
    }

    #[test]
    fn ten_thousand_mappings_plan_quickly() {
        let text: String = (0..10_000)
            .map(|i| format!("{}:172.17.0.{}:80\n", 10_000 + i, 2 + i % 2))
            .collect();
        let start = std::time::Instant::now();
        let specs = parse_publish_file("big", &text).expect("parses");
        let planned = plan_publish(&specs, &[], &endpoints(), &host(), &mut PortPicker::new(1))
            .expect("plan");
        assert_eq!(planned.len(), 10_000);
        // Planning against 10,000 stored records stays linear too.
        let more: Vec<PortSpec> = (0..10_000)
            .map(|i| parse_endpoint_publish(&format!("{}:80", 30_000 + i), "db").expect("valid"))
            .collect();
        plan_publish(
            &more,
            &planned,
            &endpoints(),
            &host(),
            &mut PortPicker::new(1),
        )
        .expect("plan");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn unpublish_matches_what_publish_made() {
        let existing = vec![
            rec("0.0.0.0", 8080, Tcp, "web", 80),
            rec("127.0.0.1", 5000, Udp, "web", 5000),
            rec("0.0.0.0", 8000, Tcp, "web", 80),
            rec("0.0.0.0", 8001, Tcp, "web", 81),
            rec("0.0.0.0", 9000, Tcp, "db", 80),
        ];
        let unpublish = |texts: &[&str]| {
            let specs: Vec<PortSpec> = texts
                .iter()
                .map(|t| parse_publish(t).expect("valid"))
                .collect();
            plan_unpublish(&specs, &existing, &endpoints(), Ipv4Addr::UNSPECIFIED)
                .map(|v| v.into_iter().map(|r| r.store_key()).collect::<Vec<_>>())
        };
        assert_eq!(
            unpublish(&["8080:172.17.0.2:80"]),
            Ok(vec!["0.0.0.0:8080/tcp".to_string()])
        );
        assert_eq!(
            unpublish(&["127.0.0.1::web:5000/udp"]),
            Ok(vec!["127.0.0.1:5000/udp".to_string()])
        );
        assert_eq!(
            unpublish(&["8000-8001:web:80-81", "8000:web:80"]),
            Ok(vec![
                "0.0.0.0:8000/tcp".to_string(),
                "0.0.0.0:8001/tcp".to_string()
            ]),
            "no repeats"
        );
        assert_eq!(
            unpublish(&[":web:80"]),
            Ok(vec![
                "0.0.0.0:8080/tcp".to_string(),
                "0.0.0.0:8000/tcp".to_string()
            ]),
            "every host port of web:80, in stored order"
        );
        assert_eq!(
            unpublish(&["8000-8010:web:81"]),
            Ok(vec!["0.0.0.0:8001/tcp".to_string()])
        );
        let err = unpublish(&["8080:172.17.0.2:80", "8080:172.17.0.3:80"]).expect_err("not db's");
        assert_eq!(
            err.to_string(),
            "\"8080:172.17.0.3:80\": nothing matching is published; see `netpath port --all`"
        );
        assert_eq!(
            unpublish(&["8080:172.17.0.9:80"])
                .expect_err("no endpoint")
                .to_string(),
            "\"8080:172.17.0.9:80\": no endpoint has the address 172.17.0.9; check `netpath endpoint ls`"
        );
        assert!(
            unpublish(&["127.0.0.1:8080:web:80"]).is_err(),
            "other address"
        );
    }

    #[test]
    fn map_entries_carry_the_contract() {
        let r = rec("127.0.0.1", 8080, Udp, "web", 80);
        let (k, v) = port_entry(&r, v4("172.17.0.2"), 42).expect("IPv4");
        assert_eq!(
            k,
            PortKey {
                host_addr: addr_v4([127, 0, 0, 1]),
                host_port: [0x1f, 0x90],
                protocol: netpath_common::IPPROTO_UDP,
                family: FAMILY_IPV4,
            }
        );
        assert_eq!(
            v,
            PublishedPort {
                endpoint_addr: addr_v4([172, 17, 0, 2]),
                endpoint_port: [0, 80],
                family: FAMILY_IPV4,
                flags: port_flags::HOST_ONLY,
                endpoint_ifindex: 42,
            }
        );
        let (k, v) =
            port_entry(&rec("0.0.0.0", 443, Tcp, "web", 8443), v4("172.17.0.2"), 7).expect("v4");
        assert_eq!(k.host_addr, [0; 16], "wildcard is all zero");
        assert_eq!(
            (k.host_port, k.protocol),
            ([1, 187], netpath_common::IPPROTO_TCP)
        );
        assert_eq!((v.endpoint_port, v.flags), ([0x20, 0xfb], 0));
        assert_eq!(
            port_entry(&rec("::1", 80, Tcp, "web", 80), v4("172.17.0.2"), 7),
            None
        );

        let eps = endpoints();
        let by_name: HashMap<&str, &Endpoint> = eps.iter().map(|e| (e.name.as_str(), e)).collect();
        let mut on_back = rec("0.0.0.0", 80, Tcp, "db", 80);
        on_back.network = "back".into();
        let idx = |name: &str| (name == "npv-db-1").then_some(9);
        assert_eq!(
            locate(&on_back, &by_name, idx),
            Some((v4("10.5.0.2"), Some(9)))
        );
        assert_eq!(
            locate(&rec("0.0.0.0", 80, Tcp, "db", 80), &by_name, idx),
            Some((v4("172.17.0.3"), None)),
            "veth missing"
        );
        assert_eq!(
            locate(&rec("0.0.0.0", 80, Tcp, "gone", 80), &by_name, idx),
            None
        );
    }

    /// web is 172.17.0.2 behind ifindex 5.
    fn at_web(_: &PublishedPortRecord) -> Option<Location> {
        Some((v4("172.17.0.2"), Some(5)))
    }

    #[test]
    fn loopback_only_endpoint_ports_get_a_guard_entry() {
        let lo = rec("127.0.0.1", 8080, Tcp, "web", 80);
        let lo2 = rec("127.0.0.2", 8081, Tcp, "web", 80);
        let wide = rec("0.0.0.0", 8082, Tcp, "web", 80);
        let other_proto = rec("0.0.0.0", 8080, Udp, "web", 80);
        let guard = (
            PortKey {
                host_addr: addr_v4([172, 17, 0, 2]),
                host_port: [0, 80],
                protocol: netpath_common::IPPROTO_TCP,
                family: FAMILY_IPV4,
            },
            PublishedPort {
                endpoint_addr: addr_v4([172, 17, 0, 2]),
                endpoint_port: [0, 80],
                family: FAMILY_IPV4,
                flags: port_flags::GUARD | port_flags::HOST_ONLY,
                endpoint_ifindex: 5,
            },
        );
        assert_eq!(guard_entry(v4("172.17.0.2"), 80, Tcp, 5), guard);
        let entry = |r: &PublishedPortRecord| port_entry(r, v4("172.17.0.2"), 5).expect("v4");

        let only_lo = [lo.clone(), lo2.clone(), other_proto.clone()];
        assert_eq!(
            desired_entries(&only_lo, at_web),
            vec![entry(&lo), entry(&lo2), entry(&other_proto), guard],
            "one guard for 80/tcp, published on loopback only; none for 80/udp"
        );
        let mixed = [lo.clone(), wide.clone()];
        assert_eq!(
            desired_entries(&mixed, at_web),
            vec![entry(&lo), entry(&wide)],
            "also published on 0.0.0.0: exposed anyway, no guard"
        );
        assert!(
            desired_entries(&only_lo, |_| Some((v4("172.17.0.2"), None))).is_empty(),
            "no veth, no entries"
        );

        // Incremental: publishing lo adds its entry and the guard.
        assert_eq!(
            changes_after(std::slice::from_ref(&lo), std::slice::from_ref(&lo), at_web),
            vec![
                PortChange::Put(entry(&lo).0, entry(&lo).1),
                PortChange::Put(guard.0, guard.1)
            ]
        );
        // Publishing wide next to it drops the guard.
        assert_eq!(
            changes_after(std::slice::from_ref(&wide), &mixed, at_web),
            vec![
                PortChange::Put(entry(&wide).0, entry(&wide).1),
                PortChange::Remove(guard.0)
            ]
        );
        // Unpublishing wide again brings the guard back.
        assert_eq!(
            changes_after(
                std::slice::from_ref(&wide),
                std::slice::from_ref(&lo),
                at_web
            ),
            vec![
                PortChange::Remove(entry(&wide).0),
                PortChange::Put(guard.0, guard.1)
            ]
        );
        // Unpublishing the last loopback publish removes the guard.
        assert_eq!(
            changes_after(std::slice::from_ref(&lo), &[], at_web),
            vec![
                PortChange::Remove(entry(&lo).0),
                PortChange::Remove(guard.0)
            ]
        );
        // Ports never published on loopback touch no guard key.
        assert_eq!(
            changes_after(std::slice::from_ref(&wide), &[], at_web),
            vec![PortChange::Remove(entry(&wide).0)]
        );
        assert_eq!(entries_needed(&mixed), 3);
    }

    #[test]
    fn diff_removes_stale_and_writes_changed_entries() {
        let e = |port: u16, ifindex: u32| {
            port_entry(
                &rec("0.0.0.0", port, Tcp, "web", 80),
                v4("172.17.0.2"),
                ifindex,
            )
            .expect("v4")
        };
        let current = [e(1, 5), e(2, 5), e(3, 5)];
        let desired = [e(2, 5), e(3, 6), e(4, 6)];
        assert_eq!(
            diff_port_entries(&current, &desired),
            vec![
                PortChange::Remove(e(1, 5).0),
                PortChange::Put(e(3, 6).0, e(3, 6).1),
                PortChange::Put(e(4, 6).0, e(4, 6).1),
            ]
        );
        assert!(diff_port_entries(&desired, &desired).is_empty());
    }

    #[test]
    fn docker_port_formatting() {
        let records = [
            rec("0.0.0.0", 8080, Tcp, "web", 80),
            rec("127.0.0.1", 5000, Udp, "web", 5000),
            rec("::", 8080, Tcp, "web", 80),
            rec("0.0.0.0", 9000, Tcp, "db", 5432),
            rec("0.0.0.0", 8443, Tcp, "web", 443),
        ];
        assert_eq!(
            format_endpoint_ports(&records, "web", None).as_deref(),
            Some(
                "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n443/tcp -> 0.0.0.0:8443\n5000/udp -> 127.0.0.1:5000\n"
            )
        );
        assert_eq!(
            format_endpoint_ports(&records, "web", Some((80, Tcp))).as_deref(),
            Some("0.0.0.0:8080\n[::]:8080\n")
        );
        assert_eq!(
            format_endpoint_ports(&records, "web", Some((80, Udp))),
            None
        );
        assert_eq!(
            format_endpoint_ports(&records, "cache", None).as_deref(),
            Some("")
        );
        assert_eq!(
            format_all_ports(&records),
            "db\n  5432/tcp -> 0.0.0.0:9000\nweb\n  80/tcp -> 0.0.0.0:8080\n  80/tcp -> [::]:8080\n  443/tcp -> 0.0.0.0:8443\n  5000/udp -> 127.0.0.1:5000\n"
        );
    }

    #[test]
    fn changed_records_alone_give_the_same_changes_unless_a_guard_is_involved() {
        let web = endpoint("web", &[("bridge", "172.17.0.2")]);
        let by_name: HashMap<&str, &Endpoint> = [("web", &web)].into_iter().collect();
        let locate = |r: &PublishedPortRecord| locate(r, &by_name, |_| Some(7));
        let stored = [
            rec("0.0.0.0", 8080, Tcp, "web", 80),
            rec("127.0.0.1", 9090, Tcp, "web", 90),
        ];
        // A new port of another endpoint port: no guard involved.
        let changed = vec![rec("0.0.0.0", 8081, Tcp, "web", 80)];
        let after: Vec<_> = stored.iter().chain(&changed).cloned().collect();
        let loopback: Vec<_> = after.iter().filter(|r| is_host_only(r)).cloned().collect();
        assert!(!touches_guards(&changed, &loopback));
        assert_eq!(
            changes_after(&changed, &changed, locate),
            changes_after(&changed, &after, locate)
        );
        // 0.0.0.0 for web:90, published so far only on loopback: its guard goes, which only
        // every record of web:90 shows.
        let changed = vec![rec("0.0.0.0", 9091, Tcp, "web", 90)];
        let after: Vec<_> = stored.iter().chain(&changed).cloned().collect();
        assert!(touches_guards(&changed, &loopback));
        let with_all = changes_after(&changed, &after, locate);
        assert!(
            with_all.contains(&PortChange::Remove(guard_key(v4("172.17.0.2"), 90, Tcp))),
            "{with_all:?}"
        );
        // A loopback publish itself.
        let changed = vec![rec("127.0.0.1", 7000, Udp, "web", 70)];
        assert!(touches_guards(&changed, &[]));
    }
}
