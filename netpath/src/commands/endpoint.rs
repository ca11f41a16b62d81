//! Owns `netpath endpoint …`: an endpoint's namespace, its veth per network, address, MAC,
//! routes and resolv.conf, and its entries in the datapath. Records are written `Creating`
//! before the first kernel change and `Ready` after the last, so reconcile can finish or undo
//! whatever a crash interrupted, and an address is never handed out twice.
use std::path::{Path, PathBuf};

use netpath_common::{AddrKey, program_name};

use crate::{
    addr::MacAddr,
    app::{App, AppError, Result, endpoint_entry, now_secs, parse_ipv4_arg},
    cli::EndpointCreateArgs,
    commands::{network, publish},
    instance::{Instance, host_veth_name, peer_veth_name},
    ipam,
    model::{Attachment, Endpoint, EndpointMode, HOST_NETWORK, Lifecycle, NONE_NETWORK, Network},
    netlink, netns, sys,
};

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "invalid endpoint name {name:?}: use letters, digits, '_', '.', '-' (at most 48), starting with a letter or digit"
        )))
    }
}

fn parse_mac(value: &str) -> Result<MacAddr> {
    value
        .parse::<MacAddr>()
        .map_err(|e| AppError::Invalid(format!("--mac: {e}")))
}

/// Chooses address and MAC for a new attachment of `endpoint` to `net` (nothing is written).
fn plan_attachment(
    app: &App,
    endpoint: &str,
    net: &Network,
    ip: Option<&str>,
    mac: Option<&str>,
    ifname: String,
) -> Result<Attachment> {
    let requested = ip.map(|s| parse_ipv4_arg("--ip", s)).transpose()?;
    let mut used = app.store.used_addresses(&net.name)?;
    // The config's `default-gateway` is a router on the default network: never hand it out.
    if let Some(gw) = app
        .config
        .default_gateway
        .filter(|_| net.name == crate::model::DEFAULT_NETWORK)
    {
        used.entry(gw)
            .or_insert_with(|| "the config's default-gateway".into());
    }
    let ip = ipam::allocate_ip(net, &used, requested)?;
    let mac = match mac {
        Some(m) => parse_mac(m)?,
        None => MacAddr::from_ipv4(ip),
    };
    for other in app.store.endpoints()? {
        if let Some(a) = other
            .attachments
            .iter()
            .find(|a| a.network == net.name && a.mac == mac)
        {
            return Err(AppError::Conflict(format!(
                "MAC {mac} is already used by endpoint {} on network {}",
                other.name, a.network
            )));
        }
    }
    Ok(Attachment {
        network: net.name.clone(),
        ip,
        mac,
        ifname,
        host_veth: host_veth_name(endpoint, &net.name),
        state: Lifecycle::Creating,
    })
}

/// Resolves `--network` into a mode, and `--netns`/`--pid` into a namespace path.
fn plan_mode(app: &App, args: &EndpointCreateArgs) -> Result<(EndpointMode, PathBuf, bool)> {
    let given = match (&args.netns, args.pid) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(pid)) => Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        (None, None) => None,
    };
    if let Some(p) = &given
        && !netns::exists(p)
    {
        return Err(AppError::NotFound(format!(
            "{} is not a network namespace",
            p.display()
        )));
    }
    let own = || {
        given
            .clone()
            .map(|p| (p, false))
            .unwrap_or_else(|| (app.instance.netns_path(&args.name), true))
    };
    Ok(match args.network.as_str() {
        HOST_NETWORK => {
            if given.is_some() || args.ip.is_some() || args.mac.is_some() {
                return Err(AppError::Invalid(
                    "--network host takes no --netns, --pid, --ip or --mac".into(),
                ));
            }
            (EndpointMode::Host, PathBuf::new(), false)
        }
        NONE_NETWORK => {
            if args.ip.is_some() || args.mac.is_some() {
                return Err(AppError::Invalid(
                    "--network none has no interface to give --ip or --mac to".into(),
                ));
            }
            let (p, owned) = own();
            (EndpointMode::None, p, owned)
        }
        other if other.starts_with("container:") => {
            let target = &other["container:".len()..];
            let t = app.store.endpoint(target)?.ok_or_else(|| {
                AppError::NotFound(format!(
                    "--network container:{target}: endpoint {target} not found"
                ))
            })?;
            if t.mode == EndpointMode::Host {
                return Err(AppError::Invalid(format!(
                    "endpoint {target} uses the host namespace; use --network host"
                )));
            }
            if given.is_some() || args.ip.is_some() || args.mac.is_some() {
                return Err(AppError::Invalid(
                    "--network container:… takes no --netns, --pid, --ip or --mac".into(),
                ));
            }
            let root = root_namespace_owner(app, &t)?;
            (
                EndpointMode::Container(root.name.clone()),
                root.netns.clone(),
                false,
            )
        }
        _ => {
            let (p, owned) = own();
            (EndpointMode::Bridge, p, owned)
        }
    })
}

/// For `container:X` chains, the endpoint that really owns the namespace.
fn root_namespace_owner(app: &App, ep: &Endpoint) -> Result<Endpoint> {
    let mut cur = ep.clone();
    for _ in 0..16 {
        match &cur.mode {
            EndpointMode::Container(next) => {
                cur = app
                    .store
                    .endpoint(next)?
                    .ok_or_else(|| AppError::NotFound(format!("endpoint {next} not found")))?;
            }
            _ => return Ok(cur),
        }
    }
    Err(AppError::Invalid(format!(
        "endpoint {} has a container: chain that loops",
        ep.name
    )))
}

pub fn create(app: &mut App, args: &EndpointCreateArgs) -> Result<Endpoint> {
    validate_name(&args.name)?;
    if app.store.endpoint(&args.name)?.is_some() {
        return Err(AppError::Conflict(format!(
            "endpoint {} already exists; remove it first or pick another name",
            args.name
        )));
    }
    let (mode, netns_path, netns_owned) = plan_mode(app, args)?;
    if netns_owned && netns_path.exists() {
        return Err(AppError::Conflict(format!(
            "network namespace {} already exists; remove it (ip netns del) or use --netns to adopt it",
            netns_path.display()
        )));
    }
    let mut attachments = Vec::new();
    let mut network = None;
    if mode == EndpointMode::Bridge {
        let net = network::resolve(app, &args.network)?;
        attachments.push(plan_attachment(
            app,
            &args.name,
            &net,
            args.ip.as_deref(),
            args.mac.as_deref(),
            "eth0".into(),
        )?);
        network = Some(net);
    }
    let mut ep = Endpoint {
        name: args.name.clone(),
        mode,
        netns: netns_path,
        netns_owned,
        attachments,
        state: Lifecycle::Creating,
        created: now_secs(),
    };
    // Published ports are checked before anything is made, and recorded with the Ready record.
    let published = publish::plan_for_new_endpoint(app, &ep, args)?;
    // Reserve the name and address before touching the kernel.
    app.store.write(|tx| tx.put_endpoint(&ep))?;
    sys::crash_point("endpoint-reserved");
    if let Err(e) = realize(app, &mut ep, network.as_ref()) {
        undo(app, &ep);
        app.store.write(|tx| tx.delete_endpoint(&ep.name))?;
        return Err(e);
    }
    sys::crash_point("endpoint-before-ready");
    ep.state = Lifecycle::Ready;
    for a in &mut ep.attachments {
        a.state = Lifecycle::Ready;
    }
    app.store.write(|tx| {
        tx.put_endpoint(&ep)?;
        tx.put_published_ports(&published)
    })?;
    if let Err(e) = publish::install(app, &published) {
        // install took its records back; the endpoint goes too, so the command changed nothing.
        let _ = remove(app, &ep.name);
        return Err(e);
    }
    Ok(ep)
}

/// Makes the kernel side of a new endpoint.
fn realize(app: &mut App, ep: &mut Endpoint, net: Option<&Network>) -> Result<()> {
    if ep.mode == EndpointMode::Host || matches!(ep.mode, EndpointMode::Container(_)) {
        return Ok(());
    }
    if ep.netns_owned {
        netns::create(&app.instance.netns_name(&ep.name))?;
        write_resolv_conf(app, &ep.name)?;
    }
    netlink::in_netns(&ep.netns, |nl| async move {
        let lo = nl.require_link("lo").await?;
        nl.set_up(lo.index).await
    })?;
    if let (Some(net), Some(att)) = (net, ep.attachments.first().cloned()) {
        plumb_attachment(app, &ep.netns, net, &att, true)?;
    }
    Ok(())
}

fn write_resolv_conf(app: &App, endpoint: &str) -> Result<()> {
    let path = app.instance.resolv_conf_path(endpoint);
    let host = host_resolv_conf();
    let content = app.config.resolv_conf(&host);
    let io = |what: &str, source| AppError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("has parent")).map_err(|e| io("create", e))?;
    std::fs::write(&path, content).map_err(|e| io("write", e))
}

/// The host's resolver configuration. With systemd-resolved, /etc/resolv.conf names only the
/// loopback stub (unreachable from an endpoint), so the upstream list is read instead, as
/// Docker does.
fn host_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let only_stub = etc
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .all(|ns| ns.trim().starts_with("127."));
    if only_stub && let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
        return upstream;
    }
    etc
}

/// One endpoint on one network: veth pair, datapath entries and program, bridge port, then the
/// container side (name, MAC, MTU, address, route). The program is attached before the veth is
/// up, so no packet of the endpoint ever bypasses the datapath.
fn plumb_attachment(
    app: &mut App,
    netns_path: &Path,
    net: &Network,
    att: &Attachment,
    default_route: bool,
) -> Result<()> {
    let peer = peer_veth_name(&att.host_veth);
    // A leftover of an interrupted attempt would make the create fail with EEXIST.
    app.block_on(app.nl().delete_link_named(&att.host_veth))?;
    app.block_on(app.nl().delete_link_named(&peer))?;
    let host = app.block_on(app.nl().create_veth(&att.host_veth, &peer, net.mtu))?;
    sys::crash_point("endpoint-veth-created");
    let entry = endpoint_entry(att, net.id, host.index);
    {
        let (dp, maps) = app.datapath()?;
        maps.put_endpoint(&entry)?;
        dp.attach_ingress(&att.host_veth, program_name::FROM_ENDPOINT)?;
    }
    let bridge = app.block_on(app.nl().link(&net.bridge))?.ok_or_else(|| {
        AppError::NotFound(format!(
            "bridge {} of network {} is missing; run `netpath reconcile`",
            net.bridge, net.name
        ))
    })?;
    app.block_on(app.nl().set_controller(host.index, bridge.index))?;
    app.block_on(app.nl().set_up(host.index))?;
    let peer_link = app.block_on(app.nl().require_link(&peer))?;
    app.block_on(app.nl().move_to_netns(peer_link.index, netns_path))?;
    sys::crash_point("endpoint-peer-moved");
    let gateway = (default_route && !net.internal).then(|| network::route_gateway(app, net));
    netlink::configure_peer(
        netns_path,
        netlink::PeerConfig {
            peer,
            ifname: att.ifname.clone(),
            mac: att.mac.octets(),
            mtu: net.mtu,
            address: att.ip,
            prefix: net.subnet.prefix,
            gateway,
        },
    )?;
    Ok(())
}

/// Removes the kernel side of every attachment; the namespace too if netpath made it.
/// Best effort: used on rollback and removal, where every step must be tried.
fn undo(app: &mut App, ep: &Endpoint) {
    for att in &ep.attachments {
        unplumb_attachment(app, att);
    }
    remove_owned_netns(&app.instance, ep);
}

/// The namespace netpath made for `ep` (if it did) and its resolv.conf directory; what is
/// already gone is skipped. Shared with the purge of an instance whose host namespace is gone.
pub fn remove_owned_netns(instance: &Instance, ep: &Endpoint) {
    if ep.netns_owned {
        let _ = netns::remove(&ep.netns);
        if let Some(dir) = instance.resolv_conf_path(&ep.name).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unplumb_attachment(app: &mut App, att: &Attachment) {
    let ifindex = app
        .block_on(app.nl().link(&att.host_veth))
        .ok()
        .flatten()
        .map(|l| l.index);
    if let Ok((dp, maps)) = app.datapath() {
        let key = AddrKey::v4(att.ip.octets());
        let _ = dp.detach_ingress(&att.host_veth, program_name::FROM_ENDPOINT);
        // The address entry may point at this veth even if the ifindex is unknown now.
        let idx = ifindex.or_else(|| {
            maps.addr_entries()
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.host_ifindex)
        });
        let _ = maps.remove_endpoint(idx.unwrap_or(0), key);
    }
    // Deleting one end of a veth deletes both.
    let _ = app.block_on(app.nl().delete_link_named(&att.host_veth));
}

pub fn remove(app: &mut App, name: &str) -> Result<()> {
    let mut ep = app
        .store
        .endpoint(name)?
        .ok_or_else(|| AppError::NotFound(format!("endpoint {name} not found")))?;
    let sharers: Vec<String> = app
        .store
        .endpoints()?
        .into_iter()
        .filter(|e| e.mode == EndpointMode::Container(name.to_string()))
        .map(|e| e.name)
        .collect();
    if !sharers.is_empty() {
        return Err(AppError::Conflict(format!(
            "endpoint {name} shares its namespace with {}; remove those first",
            sharers.join(", ")
        )));
    }
    ep.state = Lifecycle::Removing;
    retire_published_ports(app, &ep, None)?;
    undo(app, &ep);
    app.store.write(|tx| tx.delete_endpoint(name))?;
    Ok(())
}

/// Writes `ep` (already marked Removing) together with the deletion of its published ports (on
/// `network`, or all), in one transaction, then takes those ports out of the datapath before
/// any veth goes. A datapath failure is left to reconcile: the records are already gone.
fn retire_published_ports(app: &mut App, ep: &Endpoint, network: Option<&str>) -> Result<()> {
    let published = publish::records_of(app, &ep.name, network)?;
    let keys: Vec<String> = published.iter().map(|r| r.store_key()).collect();
    app.store.write(|tx| {
        tx.put_endpoint(ep)?;
        tx.delete_published_ports(keys.iter().map(String::as_str))
    })?;
    if let Err(e) = publish::uninstall(app, &published) {
        log::warn!(
            "endpoint {}: removing its published ports from the datapath: {e}; reconcile finishes it",
            ep.name
        );
    }
    Ok(())
}

pub fn connect(
    app: &mut App,
    network_name: &str,
    name: &str,
    ip: Option<&str>,
) -> Result<Attachment> {
    let mut ep = app
        .store
        .endpoint(name)?
        .ok_or_else(|| AppError::NotFound(format!("endpoint {name} not found")))?;
    if ep.mode != EndpointMode::Bridge {
        return Err(AppError::Invalid(format!(
            "endpoint {name} is in {:?} mode; only bridge-mode endpoints can join networks",
            ep.mode
        )));
    }
    if ep.attachments.iter().any(|a| a.network == network_name) {
        return Err(AppError::Conflict(format!(
            "endpoint {name} is already on network {network_name}"
        )));
    }
    let net = network::resolve(app, network_name)?;
    let ifname = (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !ep.attachments.iter().any(|a| &a.ifname == n))
        .expect("unbounded");
    let att = plan_attachment(app, name, &net, ip, None, ifname)?;
    ep.attachments.push(att.clone());
    app.store.write(|tx| tx.put_endpoint(&ep))?;
    let first = ep.attachments.len() == 1;
    if let Err(e) = plumb_attachment(app, &ep.netns.clone(), &net, &att, first) {
        unplumb_attachment(app, &att);
        ep.attachments.retain(|a| a.network != network_name);
        app.store.write(|tx| tx.put_endpoint(&ep))?;
        return Err(e);
    }
    for a in &mut ep.attachments {
        a.state = Lifecycle::Ready;
    }
    app.store.write(|tx| tx.put_endpoint(&ep))?;
    Ok(att)
}

pub fn disconnect(app: &mut App, network_name: &str, name: &str) -> Result<()> {
    let mut ep = app
        .store
        .endpoint(name)?
        .ok_or_else(|| AppError::NotFound(format!("endpoint {name} not found")))?;
    let Some(pos) = ep
        .attachments
        .iter()
        .position(|a| a.network == network_name)
    else {
        return Err(AppError::NotFound(format!(
            "endpoint {name} is not on network {network_name}"
        )));
    };
    let att = ep.attachments[pos].clone();
    ep.attachments[pos].state = Lifecycle::Removing;
    retire_published_ports(app, &ep, Some(network_name))?;
    unplumb_attachment(app, &att);
    ep.attachments.remove(pos);
    app.store.write(|tx| tx.put_endpoint(&ep))?;
    Ok(())
}

pub fn list(app: &App) -> Result<String> {
    let mut out = format!(
        "{:<16} {:<14} {:<16} {:<18} {:<8} {}\n",
        "NAME", "NETWORK", "IP", "MAC", "STATE", "NETNS"
    );
    for ep in app.store.endpoints()? {
        let state = format!("{:?}", ep.state).to_lowercase();
        let netns = if ep.mode == EndpointMode::Host {
            "(host)".into()
        } else {
            ep.netns.display().to_string()
        };
        if ep.attachments.is_empty() {
            out.push_str(&format!(
                "{:<16} {:<14} {:<16} {:<18} {:<8} {}\n",
                ep.name,
                ep.mode.to_string(),
                "-",
                "-",
                state,
                netns
            ));
        }
        for a in &ep.attachments {
            out.push_str(&format!(
                "{:<16} {:<14} {:<16} {:<18} {:<8} {}\n",
                ep.name,
                a.network,
                a.ip.to_string(),
                a.mac.to_string(),
                state,
                netns
            ));
        }
    }
    Ok(out)
}

pub fn inspect(app: &App, names: &[String]) -> Result<String> {
    let mut out = Vec::new();
    for name in names {
        let ep = app
            .store
            .endpoint(name)?
            .ok_or_else(|| AppError::NotFound(format!("endpoint {name} not found")))?;
        out.push(ep);
    }
    let v = if out.len() == 1 {
        serde_json::to_value(&out[0])
    } else {
        serde_json::to_value(&out)
    };
    Ok(serde_json::to_string_pretty(&v.expect("serializable")).expect("serializable"))
}

/// Reconcile one endpoint record with the kernel: an interrupted create is undone, an
/// interrupted removal finished, a ready endpoint gets its datapath entries and program back.
pub fn reconcile(app: &mut App, ep: &Endpoint) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    match ep.state {
        Lifecycle::Creating | Lifecycle::Removing => {
            undo(app, ep);
            app.store.write(|tx| tx.delete_endpoint(&ep.name))?;
            notes.push(format!(
                "endpoint {}: removed an interrupted {}",
                ep.name,
                if ep.state == Lifecycle::Creating {
                    "create"
                } else {
                    "removal"
                }
            ));
            return Ok(notes);
        }
        Lifecycle::Ready => {}
    }
    let mut record = ep.clone();
    let mut changed = false;
    for att in ep.attachments.iter() {
        if att.state != Lifecycle::Ready {
            unplumb_attachment(app, att);
            record.attachments.retain(|a| a.network != att.network);
            changed = true;
            notes.push(format!(
                "endpoint {}: dropped an interrupted change on network {}",
                ep.name, att.network
            ));
            continue;
        }
        let Some(net) = app.store.network(&att.network)? else {
            continue;
        };
        match app.block_on(app.nl().link(&att.host_veth))? {
            Some(link) => {
                let entry = endpoint_entry(att, net.id, link.index);
                let (dp, maps) = app.datapath()?;
                if maps.endpoint_by_ifindex(link.index) != Some(entry) {
                    maps.put_endpoint(&entry)?;
                    notes.push(format!(
                        "endpoint {}: restored datapath entry on {}",
                        ep.name, att.host_veth
                    ));
                }
                if !dp.is_attached(&att.host_veth, link.index, program_name::FROM_ENDPOINT) {
                    dp.attach_ingress(&att.host_veth, program_name::FROM_ENDPOINT)?;
                    notes.push(format!(
                        "endpoint {}: re-attached {} to {}",
                        ep.name,
                        program_name::FROM_ENDPOINT,
                        att.host_veth
                    ));
                }
            }
            None if netns::exists(&ep.netns) => {
                plumb_attachment(app, &ep.netns.clone(), &net, att, att.ifname == "eth0")?;
                notes.push(format!(
                    "endpoint {}: recreated its interface on network {}",
                    ep.name, att.network
                ));
            }
            None => notes.push(format!(
                "endpoint {}: its namespace {} is gone; remove it with `netpath endpoint rm {}`",
                ep.name,
                ep.netns.display(),
                ep.name
            )),
        }
    }
    if changed {
        app.store.write(|tx| tx.put_endpoint(&record))?;
    }
    Ok(notes)
}

/// Used by `purge`: removes an endpoint whatever its state.
pub fn force_remove(app: &mut App, ep: &Endpoint) -> Result<()> {
    undo(app, ep);
    let keys: Vec<String> = publish::records_of(app, &ep.name, None)?
        .iter()
        .map(|r| r.store_key())
        .collect();
    app.store.write(|tx| {
        tx.delete_published_ports(keys.iter().map(String::as_str))?;
        tx.delete_endpoint(&ep.name)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_checked() {
        for ok in ["web", "db-1", "a.b_c", "X9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_x", "a b", "a/b", "../etc", &"e".repeat(49)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid endpoint name"), "{bad}: {err}");
        }
    }
}
