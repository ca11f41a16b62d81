//! Owns every change to links, addresses and routes, made over rtnetlink in the network
//! namespace of the calling thread. Callers that work in another namespace use
//! [`in_netns`], which runs a whole netlink session on a thread inside it.
use std::{net::Ipv4Addr, path::Path};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute},
    },
};
use thiserror::Error;

use crate::netns::{self, NetnsError};

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("cannot start the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no network device named {0:?}")]
    NoSuchLink(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// True when a netlink error is the kernel's "no such device/address/file".
pub fn is_not_found(err: &NetlinkError) -> bool {
    matches!(err, NetlinkError::Request { source: rtnetlink::Error::NetlinkError(m), .. }
        if m.raw_code().abs() == libc::ENODEV || m.raw_code().abs() == libc::ENOENT || m.raw_code().abs() == libc::EADDRNOTAVAIL || m.raw_code().abs() == libc::ESRCH)
}

/// What netpath needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub controller: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            controller: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let NlLinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// An rtnetlink session in the network namespace of the thread that opened it.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a session; must be called inside a tokio runtime.
    pub fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream.try_next().await.map_err(req("list links"))? {
            out.push(Link::from_message(&msg));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(e) => {
                let e = req(format!("get link {name}"))(e);
                if is_not_found(&e) { Ok(None) } else { Err(e) }
            }
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(e) => {
                let e = req(format!("get link #{index}"))(e);
                if is_not_found(&e) { Ok(None) } else { Err(e) }
            }
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.into()))
    }

    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<Link> {
        self.handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("create bridge {name}")))?;
        self.require_link(name).await
    }

    /// Creates a veth pair in this namespace.
    pub async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<Link> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("create veth {name}/{peer}")))?;
        let peer_link = self.require_link(peer).await?;
        self.set(
            LinkUnspec::new_with_index(peer_link.index).mtu(mtu).build(),
            "set peer mtu",
        )
        .await?;
        self.require_link(name).await
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(what.to_string()))
    }

    pub async fn set_controller(&self, index: u32, controller: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(controller)
                .build(),
            "attach to bridge",
        )
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            "set link up",
        )
        .await
    }

    pub async fn set_name_mac_mtu(
        &self,
        index: u32,
        name: &str,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .address(mac.to_vec())
                .mtu(mtu)
                .build(),
            "set name, MAC and MTU",
        )
        .await
    }

    /// Moves a link into the network namespace at `netns`.
    pub async fn move_to_netns(&self, index: u32, netns: &Path) -> Result<()> {
        let file = std::fs::File::open(netns).map_err(|source| NetnsError::Io {
            what: "open",
            path: netns.into(),
            source,
        })?;
        use std::os::fd::AsRawFd as _;
        self.set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(file.as_raw_fd())
                .build(),
            "move link into namespace",
        )
        .await
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(req(format!("delete link #{index}")))
    }

    /// Deletes a link by name; a missing link is not an error.
    pub async fn delete_link_named(&self, name: &str) -> Result<()> {
        match self.link(name).await? {
            Some(link) => match self.delete_link(link.index).await {
                Err(e) if is_not_found(&e) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    pub async fn add_address(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
        {
            // Already there (a repeated or resumed plan): fine.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => Ok(()),
            other => other.map_err(req(format!("add address {addr}/{prefix}"))),
        }
    }

    /// IPv4 addresses of a link (or of every link with `None`): (ifindex, address, prefix).
    pub async fn ipv4_addresses(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut request = self.handle.address().get();
        if let Some(i) = index {
            request = request.set_link_index_filter(i);
        }
        let mut stream = request.execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(req("list addresses"))? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(a)) = attr {
                    out.push((msg.header.index, *a, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => Ok(()),
            other => other.map_err(req(format!("add default route via {gateway}"))),
        }
    }

    /// IPv4 routes of the main table: (destination, prefix, output ifindex).
    pub async fn ipv4_routes(&self) -> Result<Vec<(Ipv4Addr, u8, Option<u32>)>> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(req("list routes"))? {
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            out.push((dst, msg.header.destination_prefix_length, oif));
        }
        Ok(out)
    }

    /// Interfaces that hold a default route: where masqueraded traffic leaves.
    pub async fn default_route_links(&self) -> Result<Vec<u32>> {
        let mut out: Vec<u32> = self
            .ipv4_routes()
            .await?
            .into_iter()
            .filter(|(_, prefix, _)| *prefix == 0)
            .filter_map(|(_, _, oif)| oif)
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// How the container side of a veth is set up once it is inside its namespace.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Its temporary name, as created in the host namespace.
    pub peer: String,
    /// Its final name (`eth0`, ...).
    pub ifname: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Default route via this gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// Renames, addresses and brings up the container side of a veth inside `netns`, with its
/// default route.
pub fn configure_peer(netns: &Path, cfg: PeerConfig) -> Result<()> {
    in_netns(netns, move |nl| async move {
        let link = nl.require_link(&cfg.peer).await?;
        nl.set_name_mac_mtu(link.index, &cfg.ifname, cfg.mac, cfg.mtu)
            .await?;
        nl.add_address(link.index, cfg.address, cfg.prefix).await?;
        nl.set_up(link.index).await?;
        if let Some(gw) = cfg.gateway {
            nl.add_default_route(gw).await?;
        }
        Ok(())
    })
}

/// Runs an async netlink session on a fresh thread inside the namespace at `netns`.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetlinkError::Runtime)?;
        rt.block_on(async move { f(Netlink::open()?).await })
    })?
}
