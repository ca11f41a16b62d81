//! Owns the read-only views of the datapath: `netpath stats` (counters by outcome and drop
//! reason) and `netpath status` (programs, attach mode, uplinks, map fill levels).
use std::fmt::Write as _;

use netpath_common::program_name;

use crate::{
    app::{App, Result},
    datapath::{self, AttachMode},
    sys,
};

pub fn stats(app: &App) -> Result<String> {
    let Some((_, maps)) = app.existing_datapath() else {
        return Ok("datapath not loaded yet: create a network or endpoint first\n".into());
    };
    let (counters, drops) = maps.counters()?;
    let mut out = format!("{:<24} {:>12}\n", "COUNTER", "PACKETS");
    for (name, v) in counters {
        let _ = writeln!(out, "{name:<24} {v:>12}");
    }
    let total: u64 = drops.iter().map(|(_, v)| v).sum();
    let _ = writeln!(out, "\n{:<24} {:>12}", "DROP REASON", "PACKETS");
    for (name, v) in drops {
        let _ = writeln!(out, "{name:<24} {v:>12}");
    }
    let _ = writeln!(out, "{:<24} {total:>12}", "(total dropped)");
    Ok(out)
}

pub fn status(app: &App) -> Result<String> {
    let (major, minor) = sys::kernel_version();
    let mut out = String::new();
    let _ = writeln!(out, "instance:    {}", app.instance.name());
    let _ = writeln!(out, "kernel:      {major}.{minor}");
    let Some((dp, maps)) = app.existing_datapath() else {
        let _ = writeln!(
            out,
            "datapath:    not loaded (it loads on the first network or endpoint command)"
        );
        let _ = writeln!(
            out,
            "attach mode: {} (would be used)",
            AttachMode::detect().as_str()
        );
        return Ok(out);
    };
    let version = dp.pinned_version().unwrap_or_default();
    let current = if version == datapath::object_version() {
        "this binary's"
    } else {
        "OLDER than this binary: next change upgrades it"
    };
    let _ = writeln!(out, "datapath:    loaded, object {version} ({current})");
    let _ = writeln!(out, "attach mode: {}", dp.mode().as_str());
    let _ = writeln!(out, "pins:        {}", dp.pin_dir().display());
    let _ = writeln!(out, "programs:");
    for (name, id) in dp.program_ids() {
        let ifaces = dp.attached_interfaces(name).unwrap_or_default();
        let id = id.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
        let hook = program_name::hook(name);
        let place = if program_name::CGROUP.contains(&name) {
            if ifaces.is_empty() {
                "not attached (host sockets need Linux >= 5.14 and cgroup v2)".to_string()
            } else {
                "on the cgroup v2 root".to_string()
            }
        } else {
            format!("on {} interface(s): {}", ifaces.len(), ifaces.join(" "))
        };
        let _ = writeln!(out, "  {name:<12} id {id:<6} {hook:<22} {place}");
    }
    let links = app.block_on(app.nl().links()).unwrap_or_default();
    let _ = writeln!(out, "uplinks:");
    for u in maps.uplink_entries() {
        let name = links
            .iter()
            .find(|l| l.index == u.ifindex)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{}", u.ifindex));
        let a = u.addr;
        let _ = writeln!(
            out,
            "  {name:<12} masquerade as {}.{}.{}.{}",
            a[0], a[1], a[2], a[3]
        );
    }
    let _ = writeln!(out, "maps:");
    for (name, n, max) in maps.fill_levels() {
        let _ = writeln!(out, "  {name:<14} {n:>6} / {max}");
    }
    Ok(out)
}
