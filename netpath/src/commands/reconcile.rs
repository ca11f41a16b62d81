//! Owns convergence of kernel and store: `netpath reconcile` (also run before every change) and
//! `netpath purge`. The store is the truth; the kernel is made to match it, and devices netpath
//! named but no record owns are removed.
use std::collections::BTreeSet;

use netpath_common::program_name;

use crate::{
    app::{App, AppError, Result, is_netpath_device},
    commands::{endpoint, network, publish},
    instance::Instance,
    model::Lifecycle,
    netns,
    store::Store,
    sys,
};

/// Meta key set while a changing command runs and cleared when it succeeds: found set, the
/// previous command crashed (or failed half-way) and the next one reconciles fully first.
const META_CHANGE_IN_PROGRESS: &str = "change_in_progress";

/// Before a changing command: a full [`reconcile`] if the previous change did not finish,
/// else only what every command needs (datapath loaded, uplinks current, default network).
/// This keeps a command's cost independent of how many endpoints and ports exist; drift made
/// by hand is repaired by `netpath reconcile` or `netpath daemon`.
pub fn before_change(app: &mut App) -> Result<Vec<String>> {
    let notes = if app.store.meta(META_CHANGE_IN_PROGRESS)?.is_some() {
        reconcile(app)?
    } else {
        app.datapath()?;
        if app.store.network(crate::model::DEFAULT_NETWORK)?.is_none() {
            network::ensure_default(app)?;
        }
        Vec::new()
    };
    app.store
        .write(|tx| tx.set_meta(META_CHANGE_IN_PROGRESS, "1"))?;
    Ok(notes)
}

/// After a changing command succeeded: the next one need not reconcile.
pub fn after_change(app: &App) -> Result<()> {
    app.store
        .write(|tx| tx.delete_meta(META_CHANGE_IN_PROGRESS))?;
    Ok(())
}

/// Brings the kernel in line with the store; returns what it changed, one line each.
pub fn reconcile(app: &mut App) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    app.datapath()?;
    // The default network always exists, like docker0.
    if app.store.network(crate::model::DEFAULT_NETWORK)?.is_none() {
        network::ensure_default(app)?;
    }
    // Networks: bridge present and addressed, datapath entry current.
    let networks = app.store.networks()?;
    for net in &networks {
        if app.block_on(app.nl().link(&net.bridge))?.is_none() && !net.bridge_external {
            notes.push(format!(
                "network {}: recreated bridge {}",
                net.name, net.bridge
            ));
        }
        network::plumb_bridge(app, net)?;
        network::install_network(app, net)?;
    }
    {
        let ids: BTreeSet<u32> = networks.iter().map(|n| n.id).collect();
        let (_, maps) = app.datapath()?;
        for id in maps.network_ids() {
            if !ids.contains(&id) {
                maps.remove_network(id)?;
                notes.push(format!("removed datapath entry of unknown network id {id}"));
            }
        }
    }
    for ep in app.store.endpoints()? {
        notes.extend(endpoint::reconcile(app, &ep)?);
    }
    // Bridge attachments interrupted mid-create.
    for rec in app.store.bridge_attachments()? {
        if rec.state != Lifecycle::Ready {
            let _ = app.block_on(app.nl().delete_link_named(&rec.host_veth));
            let key = rec.netns.display().to_string();
            app.store.write(|tx| tx.delete_bridge_attachment(&key))?;
            notes.push(format!(
                "removed an interrupted attach of {key} to {}",
                rec.bridge
            ));
        }
    }
    // Orphans: netpath-named devices no record owns (e.g. a crash between create and record).
    let mut owned: BTreeSet<String> = BTreeSet::new();
    for ep in app.store.endpoints()? {
        for a in &ep.attachments {
            owned.insert(a.host_veth.clone());
        }
    }
    for rec in app.store.bridge_attachments()? {
        owned.insert(rec.host_veth.clone());
    }
    for net in app.store.networks()? {
        owned.insert(net.bridge.clone());
    }
    let links = app.block_on(app.nl().links())?;
    for link in links
        .iter()
        .filter(|l| is_netpath_device(&l.name) && !owned.contains(&l.name))
    {
        // A peer (`npp…`) still in the host namespace belongs to an interrupted create.
        let _ = app.block_on(app.nl().delete_link_named(&link.name));
        notes.push(format!("removed orphan device {}", link.name));
    }
    // Datapath entries for veths that no longer exist.
    {
        let live: BTreeSet<u32> = app
            .block_on(app.nl().links())?
            .iter()
            .map(|l| l.index)
            .collect();
        let (dp, maps) = app.datapath()?;
        for (ifindex, entry) in maps.endpoint_entries() {
            if !live.contains(&ifindex) {
                let key = netpath_common::AddrKey {
                    addr: entry.addr,
                    family: entry.family,
                    _pad: [0; 3],
                };
                maps.remove_endpoint(ifindex, key)?;
                notes.push(format!(
                    "removed datapath entry of vanished interface #{ifindex}"
                ));
            }
        }
        let live_names: BTreeSet<String> = links.iter().map(|l| l.name.clone()).collect();
        for iface in dp.attached_interfaces(program_name::FROM_ENDPOINT)? {
            if !live_names.contains(&iface) {
                dp.detach_ingress(&iface, program_name::FROM_ENDPOINT)?;
            }
        }
    }
    // Published ports: NP_PORTS rewritten from the records, with today's veth ifindexes.
    notes.extend(publish::sync(app)?);
    // Namespaces named for this instance (named instances only: the default instance's names
    // carry no prefix, so they cannot be told apart from anyone else's).
    if !app.instance.is_default() {
        let prefix = format!("{}-", app.instance.name());
        let known: BTreeSet<_> = app
            .store
            .endpoints()?
            .into_iter()
            .filter(|e| e.netns_owned)
            .map(|e| e.netns)
            .collect();
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) && !known.contains(&entry.path()) {
                    netns::remove(&entry.path())?;
                    notes.push(format!("removed orphan namespace {name}"));
                }
            }
        }
    }
    app.sync_uplinks()?;
    Ok(notes)
}

/// Removes everything the instance made. Works from any state (also a half-broken one).
pub fn purge(app: &mut App) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    // Sharers first, then owners.
    let mut endpoints = app.store.endpoints()?;
    endpoints.sort_by_key(|e| !matches!(e.mode, crate::model::EndpointMode::Container(_)));
    for ep in endpoints {
        endpoint::force_remove(app, &ep)?;
        notes.push(format!("removed endpoint {}", ep.name));
    }
    for rec in app.store.bridge_attachments()? {
        let _ = app.block_on(app.nl().delete_link_named(&rec.host_veth));
        app.store
            .write(|tx| tx.delete_bridge_attachment(&rec.store_key()))?;
    }
    for net in app.store.networks()? {
        if !net.bridge_external {
            let _ = app.block_on(app.nl().delete_link_named(&net.bridge));
        }
        app.store.write(|tx| tx.delete_network(&net.name))?;
        notes.push(format!("removed network {}", net.name));
    }
    let links = app.block_on(app.nl().links())?;
    for link in links.iter().filter(|l| is_netpath_device(&l.name)) {
        let _ = app.block_on(app.nl().delete_link_named(&link.name));
    }
    if let Some((dp, _)) = app.existing_datapath() {
        for iface in dp.attached_interfaces(program_name::FROM_UPLINK)? {
            dp.detach_ingress(&iface, program_name::FROM_UPLINK)?;
        }
        dp.detach_all_cgroup()?;
    }
    remove_outside_namespaces(&app.instance, &mut notes)?;
    Ok(notes)
}

/// `purge --force` when the network namespace the instance served no longer exists
/// ([`AppError::ServedElsewhere`] without a location): the bridges, veths and TC attachments
/// netpath made went with it, and nothing in this namespace is the instance's to touch.
/// Removes what lives outside any one namespace: the endpoint namespaces netpath created (and
/// their resolv.conf directories) and the pins, which releases the cgroup programs. The caller
/// removes the state and run directories.
pub fn purge_left_behind(instance: &Instance) -> Result<Vec<String>> {
    let _lock = sys::InstanceLock::acquire(&instance.run_dir(), instance.name())?;
    let store = Store::open(&instance.store_path())?;
    let mut notes = vec![format!(
        "the network namespace instance {} served is gone, with the bridges, veths and \
         attachments netpath made there",
        instance.name()
    )];
    for ep in store.endpoints()? {
        endpoint::remove_owned_netns(instance, &ep);
        notes.push(format!("removed endpoint {}", ep.name));
    }
    remove_outside_namespaces(instance, &mut notes)?;
    Ok(notes)
}

/// The last steps of both purges: a non-default instance's leftover namespaces (named with
/// its prefix) and its pins.
fn remove_outside_namespaces(instance: &Instance, notes: &mut Vec<String>) -> Result<()> {
    if !instance.is_default() {
        let prefix = format!("{}-", instance.name());
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = netns::remove(&entry.path());
                }
            }
        }
    }
    let pins = instance.pin_dir();
    if pins.exists() {
        std::fs::remove_dir_all(&pins).map_err(|source| AppError::Io {
            what: format!("remove {}", pins.display()),
            source,
        })?;
        notes.push(format!("removed pins {}", pins.display()));
    }
    Ok(())
}
