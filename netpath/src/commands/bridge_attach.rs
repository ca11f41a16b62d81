//! Owns `netpath attach` / `netpath detach`: the pipework case, an existing namespace put on any
//! host bridge (e.g. one holding the LAN NIC) with a static address. Plain plumbing: no IPAM
//! and no datapath programs, since the bridge is not a netpath network.
use std::path::PathBuf;

use crate::{
    addr::Ipv4Cidr,
    app::{App, AppError, Result},
    instance::{attach_veth_name, peer_veth_name},
    model::{BridgeAttachment, Lifecycle},
    netlink, netns,
};

/// `NAME` means `/run/netns/NAME`; anything with a `/` is a path.
fn netns_path(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        PathBuf::from("/run/netns").join(arg)
    }
}

/// Parses `IP/PREFIX[@GATEWAY]`.
fn parse_address(arg: &str) -> Result<(std::net::Ipv4Addr, Ipv4Cidr, Option<std::net::Ipv4Addr>)> {
    let (cidr, gw) = match arg.split_once('@') {
        Some((c, g)) => (c, Some(g)),
        None => (arg, None),
    };
    let (ip, net) = Ipv4Cidr::parse_host(cidr).map_err(|e| {
        AppError::Invalid(format!(
            "address {arg:?}: {e} (expected IP/PREFIX[@GATEWAY], e.g. 192.168.1.50/24@192.168.1.1)"
        ))
    })?;
    let gw = gw
        .map(|g| {
            g.parse().map_err(|_| {
                AppError::Invalid(format!("gateway {g:?} in {arg:?} is not an IPv4 address"))
            })
        })
        .transpose()?;
    if let Some(g) = gw
        && !net.contains(g)
    {
        return Err(AppError::Invalid(format!("gateway {g} is outside {net}")));
    }
    Ok((ip, net, gw))
}

pub fn attach(
    app: &mut App,
    bridge: &str,
    netns_arg: &str,
    address: &str,
    ifname: &str,
) -> Result<BridgeAttachment> {
    let (ip, net, gateway) = parse_address(address)?;
    let path = netns_path(netns_arg);
    if !netns::exists(&path) {
        return Err(AppError::NotFound(format!(
            "{} is not a network namespace",
            path.display()
        )));
    }
    let key = path.display().to_string();
    if app
        .store
        .bridge_attachments()?
        .iter()
        .any(|a| a.netns == path && a.bridge == bridge)
    {
        return Err(AppError::Conflict(format!(
            "{key} is already attached to {bridge}; detach it first"
        )));
    }
    let br = app
        .block_on(app.nl().link(bridge))?
        .ok_or_else(|| AppError::NotFound(format!("bridge {bridge} does not exist")))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(AppError::Invalid(format!(
            "{bridge} is not a bridge (it is {})",
            br.kind.as_deref().unwrap_or("unknown")
        )));
    }
    let host_veth = attach_veth_name(&key, bridge);
    let record = BridgeAttachment {
        bridge: bridge.into(),
        netns: path.clone(),
        address: ip,
        prefix_len: net.prefix,
        gateway,
        host_veth: host_veth.clone(),
        ifname: ifname.into(),
        state: Lifecycle::Creating,
    };
    app.store.write(|tx| tx.put_bridge_attachment(&record))?;
    let result = plumb(app, &record, br.index, br.mtu);
    if let Err(e) = result {
        let _ = app.block_on(app.nl().delete_link_named(&host_veth));
        app.store
            .write(|tx| tx.delete_bridge_attachment(&record.store_key()))?;
        return Err(e);
    }
    let record = BridgeAttachment {
        state: Lifecycle::Ready,
        ..record
    };
    app.store.write(|tx| tx.put_bridge_attachment(&record))?;
    Ok(record)
}

fn plumb(app: &App, rec: &BridgeAttachment, bridge_index: u32, mtu: u32) -> Result<()> {
    let peer = peer_veth_name(&rec.host_veth);
    app.block_on(app.nl().delete_link_named(&rec.host_veth))?;
    let host = app.block_on(app.nl().create_veth(&rec.host_veth, &peer, mtu))?;
    app.block_on(app.nl().set_controller(host.index, bridge_index))?;
    app.block_on(app.nl().set_up(host.index))?;
    let p = app.block_on(app.nl().require_link(&peer))?;
    app.block_on(app.nl().move_to_netns(p.index, &rec.netns))?;
    netlink::configure_peer(
        &rec.netns,
        netlink::PeerConfig {
            peer,
            ifname: rec.ifname.clone(),
            mac: crate::addr::MacAddr::from_ipv4(rec.address).octets(),
            mtu,
            address: rec.address,
            prefix: rec.prefix_len,
            gateway: rec.gateway,
        },
    )?;
    Ok(())
}

pub fn detach(app: &mut App, bridge: &str, netns_arg: &str) -> Result<()> {
    let path = netns_path(netns_arg);
    let rec = app
        .store
        .bridge_attachments()?
        .into_iter()
        .find(|a| a.netns == path && a.bridge == bridge)
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "{} is not attached to {bridge} by netpath",
                path.display()
            ))
        })?;
    app.block_on(app.nl().delete_link_named(&rec.host_veth))?;
    app.store
        .write(|tx| tx.delete_bridge_attachment(&rec.store_key()))?;
    Ok(())
}
