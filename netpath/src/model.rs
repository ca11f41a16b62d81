//! Owns the control plane's record types: networks, endpoints and their attachments, published
//! ports, as they are kept in the store and shown by `inspect`. Pure data: no I/O here.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::addr::{Ipv4Cidr, MacAddr};

/// Name of the default network, like Docker's.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Pseudo-networks of `docker run --net`: they are modes, not records.
pub const HOST_NETWORK: &str = "host";
pub const NONE_NETWORK: &str = "none";

/// A bridge network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Small number used as the datapath's network id (key of `NP_NETWORKS`); never reused
    /// while the network exists.
    pub id: u32,
    pub name: String,
    /// Always "bridge" today.
    pub driver: String,
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// Addresses IPAM hands out come from here (Docker's `--ip-range` / `fixed-cidr`).
    pub ip_range: Option<Ipv4Cidr>,
    /// `--internal`: no way out but to the gateway.
    pub internal: bool,
    /// Inter-container communication inside the network (`icc`).
    pub icc: bool,
    /// Masquerade traffic leaving through an uplink.
    pub masquerade: bool,
    pub mtu: u32,
    /// Bridge device name.
    pub bridge: String,
    /// The bridge existed before netpath (`--bridge EXISTING_DEV` / config `bridge`): netpath
    /// neither creates nor deletes it, and does not change its addresses.
    pub bridge_external: bool,
    /// Unix seconds.
    pub created: u64,
}

/// How an endpoint gets its network namespace (Docker's `--net` modes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "of", rename_all = "lowercase")]
pub enum EndpointMode {
    /// Own namespace with one veth per connected network.
    Bridge,
    /// Own namespace with loopback only.
    None,
    /// The host's namespace: no namespace, no veth, no address of its own.
    Host,
    /// Shares the namespace of the named endpoint.
    Container(String),
}

impl std::fmt::Display for EndpointMode {
    /// As `docker run --net` spells it: `bridge`, `none`, `host`, `container:OTHER`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bridge => f.write_str("bridge"),
            Self::None => f.write_str("none"),
            Self::Host => f.write_str("host"),
            Self::Container(other) => write!(f, "container:{other}"),
        }
    }
}

/// Where an endpoint is in its life. Records are written `Creating` before any kernel change
/// and `Ready` after the last one, so a crash in between is found and finished or undone by
/// reconcile; an address held by a record in any state is never handed out again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    Creating,
    Ready,
    Removing,
}

/// An endpoint (a container's network presence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub mode: EndpointMode,
    /// Path of its network namespace (`/run/netns/<prefix><name>` when netpath made it).
    pub netns: PathBuf,
    /// netpath created the namespace and removes it with the endpoint.
    pub netns_owned: bool,
    pub attachments: Vec<Attachment>,
    pub state: Lifecycle,
    /// Unix seconds.
    pub created: u64,
}

/// One endpoint on one network: a veth pair, an address, a MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Interface name inside the endpoint's namespace (`eth0`, `eth1`, ...).
    pub ifname: String,
    /// Host-side veth name.
    pub host_veth: String,
    pub state: Lifecycle,
}

/// A namespace put on an arbitrary host bridge with a static address (`netpath attach`, the
/// pipework case). Plain plumbing: no datapath programs, no IPAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeAttachment {
    pub bridge: String,
    pub netns: PathBuf,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub host_veth: String,
    pub ifname: String,
    pub state: Lifecycle,
}

impl BridgeAttachment {
    /// Key of the record in the store: its namespace path as text (one attachment per
    /// namespace); `delete_bridge_attachment` takes the same string.
    pub fn store_key(&self) -> String {
        self.netns.display().to_string()
    }
}

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number, as the datapath keys it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => netpath_common::IPPROTO_TCP,
            Self::Udp => netpath_common::IPPROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One published port: connections to (`host_ip`, `host_port`, `protocol`) go to
/// `container_port` of `endpoint` on `network`. The endpoint is kept by name, not by address
/// or interface index, because reconcile may recreate its veth; both are resolved whenever
/// the datapath entry is written. A host range is stored as one record per port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPortRecord {
    /// `0.0.0.0` means every address of the host.
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub protocol: Protocol,
    pub endpoint: String,
    /// The network of the endpoint attachment the traffic goes to.
    pub network: String,
    pub container_port: u16,
}

impl PublishedPortRecord {
    /// The host side as written by `docker port`: `0.0.0.0:8080`, `[::]:8080`.
    pub fn host_socket(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }

    /// Key of the record in the store, unique per host port: `0.0.0.0:8080/tcp`.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.host_socket(), self.protocol)
    }
}
