//! Owns one command's session with an instance: the checks that must pass before anything is
//! touched, the instance lock, the store, the host config, the netlink session in the served
//! namespace, and the datapath (loaded or adopted, uplinks attached). Commands borrow it.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use netpath_common::{
    DatapathConfig, EndpointEntry, FAMILY_IPV4, NetworkEntry, UplinkEntry, addr_v4, network_flags,
    program_name,
};
use thiserror::Error;

use crate::{
    config::HostConfig,
    datapath::{self, Datapath, DatapathError, maps::Maps},
    instance::Instance,
    model::{Attachment, Network},
    netlink::{Netlink, NetlinkError},
    netns::NetnsError,
    store::{Store, StoreError},
    sys::{self, SysError},
};

/// Everything a command can fail with. User mistakes are `Invalid`/`NotFound`/`Conflict` with a
/// one-line message saying what to do; the rest wrap the module that failed.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The instance's state belongs to another network namespace than this command's.
    #[error("{}", served_elsewhere(.instance, *.served, *.here, .location.as_deref()))]
    ServedElsewhere {
        instance: String,
        /// nsfs inode of the namespace the instance serves, and of this one.
        served: u64,
        here: u64,
        /// Where the served namespace can be entered; `None` when it is gone.
        location: Option<PathBuf>,
    },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Addr(#[from] crate::addr::AddrError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, AppError>;

/// The message of [`AppError::ServedElsewhere`]: where to run instead, or, when the served
/// namespace is gone, how to clear what the instance left.
fn served_elsewhere(instance: &str, served: u64, here: u64, location: Option<&Path>) -> String {
    match location {
        Some(path) => format!(
            "instance {instance} serves another network namespace ({}, inode {served}; this one \
             is {here}): run it there (`nsenter --net={} netpath --instance {instance} …`) or \
             pick another --instance",
            path.display(),
            path.display()
        ),
        None => format!(
            "instance {instance} served another network namespace (inode {served}; this one is \
             {here}), which no longer exists (no /run/netns name or process holds it): \
             `netpath --instance {instance} purge --force` removes what it left (endpoint \
             namespaces, pins, state); or pick another --instance"
        ),
    }
}

/// Meta key recording which network namespace (by nsfs inode) the instance serves.
const META_NETNS: &str = "netns_inode";

pub struct App {
    pub instance: Instance,
    pub store: Store,
    pub config: HostConfig,
    uplink_override: Vec<String>,
    rt: tokio::runtime::Runtime,
    nl: Netlink,
    datapath: Option<(Datapath, Maps)>,
    _lock: sys::InstanceLock,
}

impl App {
    /// Opens a session; refuses (before touching anything) when not root, in a private mount
    /// namespace, or in a namespace other than the one this instance serves.
    pub fn open(instance: &str, config: Option<&Path>, uplinks: Vec<String>) -> Result<Self> {
        let instance = Instance::new(instance)?;
        sys::require_root()?;
        sys::require_shared_mount_namespace()?;
        let lock = sys::InstanceLock::acquire(&instance.run_dir(), instance.name())?;
        let config = match config {
            Some(path) => HostConfig::load(path)?,
            None => HostConfig::load_optional(&instance.config_path())?,
        };
        let store = Store::open(&instance.store_path())?;
        let here_id = sys::current_netns_id()?;
        let here = here_id.to_string();
        match store.meta(META_NETNS)? {
            Some(served) if served != here => {
                // An unreadable record names no namespace that could still exist.
                let served = served.parse::<u64>().unwrap_or(0);
                return Err(AppError::ServedElsewhere {
                    instance: instance.name().to_string(),
                    served,
                    here: here_id,
                    location: sys::find_netns(served),
                });
            }
            Some(_) => {}
            None => store.write(|tx| tx.set_meta(META_NETNS, &here))?,
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| AppError::Io {
                what: "start tokio runtime".into(),
                source,
            })?;
        let nl = {
            let _guard = rt.enter();
            Netlink::open()?
        };
        Ok(Self {
            instance,
            store,
            config,
            uplink_override: uplinks,
            rt,
            nl,
            datapath: None,
            _lock: lock,
        })
    }

    /// Runs a netlink future in the served (host) namespace.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    pub fn nl(&self) -> &Netlink {
        &self.nl
    }

    /// The datapath, loaded (or adopted) on first use: programs pinned, config written,
    /// forwarding on, uplinks known and attached, cgroup programs attached. On every call the
    /// host-address table is synced, so a bridge addressed earlier in this command is known
    /// to the published-port lookups by the time its datapath entries are written.
    pub fn datapath(&mut self) -> Result<(&Datapath, &mut Maps)> {
        if self.datapath.is_none() {
            sys::ensure_bpffs()?;
            let dp = Datapath::open(&self.instance.pin_dir(), &self.instance.datapath_meta_dir())?;
            let mut maps = Maps::open(dp.pin_dir())?;
            let (min, max) = self.config.nat_port_range();
            // 0 when the kernel cannot tell (< 5.14): the cgroup programs then do nothing
            // and host processes cannot reach published ports (see datapath::netns_cookie).
            let netns_cookie = datapath::netns_cookie();
            maps.set_config(&DatapathConfig {
                nat_port_min: min,
                nat_port_max: max,
                netns_cookie,
                ..DatapathConfig::DEFAULT
            })?;
            // Without them everything but host-local access to published ports works, so a
            // failure (no cgroup v2, a kernel refusing the hook) is reported, not fatal.
            if netns_cookie != 0
                && let Err(e) = dp.attach_cgroup_programs()
            {
                eprintln!("netpath: warning: host processes cannot reach published ports: {e}");
            }
            // Docker turns forwarding on too; netpath's fib lookups need it.
            sys::write_sysctl("net.ipv4.ip_forward", "1")?;
            self.datapath = Some((dp, maps));
            self.sync_uplinks()?;
        }
        let addrs = self.block_on(self.nl.ipv4_addresses(None))?;
        let addrs: Vec<(u32, [u8; 4])> = addrs.iter().map(|(i, a, _)| (*i, a.octets())).collect();
        let (dp, maps) = self.datapath.as_mut().expect("set above");
        dp.sync_host_addrs(&addrs)?;
        Ok((dp, maps))
    }

    /// Only what is already pinned, loading nothing (read-only commands).
    pub fn existing_datapath(&self) -> Option<(Datapath, Maps)> {
        let dp =
            Datapath::adopt_existing(&self.instance.pin_dir(), &self.instance.datapath_meta_dir())?;
        let maps = Maps::open(dp.pin_dir()).ok()?;
        Some((dp, maps))
    }

    /// Uplink interfaces: `--uplink`, else config `uplinks`, else the default-route holders.
    pub fn uplink_names(&self) -> Result<Vec<String>> {
        if !self.uplink_override.is_empty() {
            return Ok(self.uplink_override.clone());
        }
        if !self.config.uplinks.is_empty() {
            return Ok(self.config.uplinks.clone());
        }
        let indexes = self.block_on(self.nl.default_route_links())?;
        let links = self.block_on(self.nl.links())?;
        Ok(links
            .into_iter()
            .filter(|l| indexes.contains(&l.index))
            .filter(|l| !is_netpath_device(&l.name))
            .map(|l| l.name)
            .collect())
    }

    /// Makes `NP_UPLINKS` and the uplink attachments match the uplinks of now.
    pub fn sync_uplinks(&mut self) -> Result<()> {
        let names = self.uplink_names()?;
        let mut entries = Vec::new();
        for name in &names {
            let link = self.block_on(self.nl.link(name))?.ok_or_else(|| {
                AppError::NotFound(format!(
                    "uplink {name} does not exist; check --uplink or the config's \"uplinks\""
                ))
            })?;
            let addrs = self.block_on(self.nl.ipv4_addresses(Some(link.index)))?;
            let Some((_, addr, _)) = addrs.first() else {
                return Err(AppError::Invalid(format!(
                    "uplink {name} has no IPv4 address to masquerade with; give it one or choose another --uplink"
                )));
            };
            entries.push(UplinkEntry {
                addr: addr_v4(addr.octets()),
                family: FAMILY_IPV4,
                _pad: 0,
                mtu: u16::try_from(link.mtu).unwrap_or(u16::MAX),
                ifindex: link.index,
            });
        }
        let (dp, maps) = self.datapath.as_mut().expect("datapath opened");
        maps.set_uplinks(&entries)?;
        let attached = dp.attached_interfaces(program_name::FROM_UPLINK)?;
        for (name, entry) in names.iter().zip(&entries) {
            if !dp.is_attached(name, entry.ifindex, program_name::FROM_UPLINK) {
                dp.attach_ingress(name, program_name::FROM_UPLINK)?;
            }
        }
        for old in attached.iter().filter(|a| !names.contains(a)) {
            dp.detach_ingress(old, program_name::FROM_UPLINK)?;
        }
        Ok(())
    }

    /// The datapath's view of a network.
    pub fn network_entry(&self, net: &Network) -> Result<NetworkEntry> {
        let bridge = self.block_on(self.nl.link(&net.bridge))?.ok_or_else(|| {
            AppError::NotFound(format!(
                "bridge {} of network {} is missing; run `netpath reconcile`",
                net.bridge, net.name
            ))
        })?;
        let mut flags = 0;
        if net.internal {
            flags |= network_flags::INTERNAL;
        }
        if !net.icc {
            flags |= network_flags::ICC_DISABLED;
        }
        if net.masquerade {
            flags |= network_flags::MASQUERADE;
        }
        Ok(NetworkEntry {
            gateway: addr_v4(net.gateway.octets()),
            subnet: addr_v4(net.subnet.network().octets()),
            gateway_mac: bridge.mac.unwrap_or_default(),
            prefix_len: net.subnet.prefix,
            family: FAMILY_IPV4,
            flags,
            bridge_ifindex: bridge.index,
        })
    }
}

/// The datapath's view of one endpoint attachment.
pub fn endpoint_entry(att: &Attachment, network_id: u32, host_ifindex: u32) -> EndpointEntry {
    EndpointEntry {
        addr: addr_v4(att.ip.octets()),
        mac: att.mac.octets(),
        family: FAMILY_IPV4,
        flags: 0,
        network_id,
        host_ifindex,
    }
}

/// Devices netpath names itself (never uplinks, always its own to clean up).
pub fn is_netpath_device(name: &str) -> bool {
    ["npv", "npp", "npa", "np-"]
        .iter()
        .any(|p| name.starts_with(p))
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn parse_ipv4_arg(flag: &str, value: &str) -> Result<Ipv4Addr> {
    value.parse().map_err(|_| {
        AppError::Invalid(format!(
            "{flag} {value:?} is not an IPv4 address (example: 172.17.0.5)"
        ))
    })
}
