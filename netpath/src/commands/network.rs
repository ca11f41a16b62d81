//! Owns `netpath network …`: creating, listing, inspecting and removing bridge networks, and
//! bringing up the default network `bridge` on first use.
use std::net::Ipv4Addr;

use crate::{
    addr::Ipv4Cidr,
    app::{App, AppError, Result, now_secs, parse_ipv4_arg},
    cli::NetworkCreateArgs,
    instance::bridge_name,
    ipam,
    model::{DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Network},
};

/// A network as requested, validated, before anything is created.
#[derive(Debug)]
struct NetworkPlan {
    network: Network,
}

/// Docker-compatible `-o` options.
fn apply_opts(
    args: &NetworkCreateArgs,
    icc: &mut bool,
    masq: &mut bool,
    mtu: &mut Option<u32>,
    bridge: &mut Option<String>,
) -> Result<()> {
    for opt in &args.opts {
        let (key, value) = opt.split_once('=').ok_or_else(|| {
            AppError::Invalid(format!("option {opt:?} is not KEY=VALUE (example: -o com.docker.network.bridge.enable_icc=false)"))
        })?;
        let short = key
            .trim_start_matches("com.docker.network.bridge.")
            .trim_start_matches("com.docker.network.driver.");
        let as_bool = |v: &str| -> Result<bool> {
            v.parse::<bool>().map_err(|_| {
                AppError::Invalid(format!("option {key} takes true or false, not {v:?}"))
            })
        };
        match short {
            "enable_icc" => *icc = as_bool(value)?,
            "enable_ip_masquerade" => *masq = as_bool(value)?,
            "mtu" => {
                *mtu = Some(value.parse().map_err(|_| {
                    AppError::Invalid(format!("option {key} takes a number, not {value:?}"))
                })?)
            }
            "name" => *bridge = Some(value.to_string()),
            _ => {
                return Err(AppError::Invalid(format!(
                    "unknown network option {key:?}; known: enable_icc, enable_ip_masquerade, mtu, name"
                )));
            }
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(AppError::Invalid(format!(
            "invalid network name {name:?}: use letters, digits, '_', '.', '-' (at most 64), starting with a letter or digit"
        )));
    }
    if name == HOST_NETWORK || name == NONE_NETWORK || name.starts_with("container:") {
        return Err(AppError::Invalid(format!(
            "{name:?} is a network mode, not a network name; pick another name"
        )));
    }
    Ok(())
}

/// Subnets the host already routes (other than netpath's own bridges): a new network must not
/// shadow them.
fn host_routed_subnets(app: &App, own_bridges: &[String]) -> Result<Vec<Ipv4Cidr>> {
    let links = app.block_on(app.nl().links())?;
    let own: Vec<u32> = links
        .iter()
        .filter(|l| own_bridges.contains(&l.name))
        .map(|l| l.index)
        .collect();
    let routes = app.block_on(app.nl().ipv4_routes())?;
    Ok(routes
        .into_iter()
        .filter(|(_, prefix, oif)| *prefix > 0 && !oif.is_some_and(|o| own.contains(&o)))
        .filter_map(|(dst, prefix, _)| format!("{dst}/{prefix}").parse::<Ipv4Cidr>().ok())
        .collect())
}

fn plan_network(app: &App, args: &NetworkCreateArgs) -> Result<NetworkPlan> {
    validate_name(&args.name)?;
    if args.driver != "bridge" {
        return Err(AppError::Invalid(format!(
            "driver {:?} is not supported; use -d bridge",
            args.driver
        )));
    }
    if app.store.network(&args.name)?.is_some() {
        return Err(AppError::Conflict(format!(
            "network {} already exists",
            args.name
        )));
    }
    let (mut icc, mut masquerade, mut mtu, mut bridge) =
        (true, true, args.mtu, args.bridge.clone());
    apply_opts(args, &mut icc, &mut masquerade, &mut mtu, &mut bridge)?;
    let existing = app.store.networks()?;
    let existing_subnets: Vec<(String, Ipv4Cidr)> = existing
        .iter()
        .map(|n| (n.name.clone(), n.subnet))
        .collect();
    let own_bridges: Vec<String> = existing.iter().map(|n| n.bridge.clone()).collect();

    let subnet = match &args.subnet {
        Some(s) => s
            .parse::<Ipv4Cidr>()
            .map_err(|e| AppError::Invalid(format!("--subnet: {e}")))?,
        None => {
            let mut taken: Vec<Ipv4Cidr> = existing_subnets.iter().map(|(_, c)| *c).collect();
            taken.extend(host_routed_subnets(app, &own_bridges)?);
            ipam::pick_subnet(&taken, &ipam::default_pool())?
        }
    };
    ipam::check_overlap(subnet, &existing_subnets)?;
    let gateway = match &args.gateway {
        Some(g) => parse_ipv4_arg("--gateway", g)?,
        None => ipam::default_gateway(subnet),
    };
    let ip_range = args
        .ip_range
        .as_deref()
        .map(|r| {
            r.parse::<Ipv4Cidr>()
                .map_err(|e| AppError::Invalid(format!("--ip-range: {e}")))
        })
        .transpose()?;
    let (bridge, bridge_external) = match bridge {
        Some(dev) => {
            if existing.iter().any(|n| n.bridge == dev) {
                return Err(AppError::Conflict(format!(
                    "bridge {dev} already belongs to another network"
                )));
            }
            let exists = app.block_on(app.nl().link(&dev))?.is_some();
            // `--bridge` names an existing device; `-o ...bridge.name=` may name a new one.
            if args.bridge.is_some() && !exists {
                return Err(AppError::NotFound(format!(
                    "bridge {dev} does not exist; create it first or omit --bridge"
                )));
            }
            (dev, exists)
        }
        None => (bridge_name(&args.name), false),
    };
    let network = Network {
        id: 0,
        name: args.name.clone(),
        driver: "bridge".into(),
        subnet,
        gateway,
        ip_range,
        internal: args.internal,
        icc,
        masquerade,
        mtu: mtu.unwrap_or(app.config.mtu_or_default()),
        bridge,
        bridge_external,
        created: now_secs(),
    };
    ipam::validate_network(&network)?;
    Ok(NetworkPlan { network })
}

/// Creates (or, for an external bridge, adopts) the bridge and gives it the gateway address.
pub fn plumb_bridge(app: &App, net: &Network) -> Result<()> {
    let link = match app.block_on(app.nl().link(&net.bridge))? {
        Some(l) => l,
        None if net.bridge_external => {
            return Err(AppError::NotFound(format!(
                "bridge {} of network {} no longer exists",
                net.bridge, net.name
            )));
        }
        None => app.block_on(app.nl().create_bridge(&net.bridge, net.mtu))?,
    };
    app.block_on(
        app.nl()
            .add_address(link.index, net.gateway, net.subnet.prefix),
    )?;
    app.block_on(app.nl().set_up(link.index))?;
    Ok(())
}

/// Puts a stored network into the datapath map.
pub fn install_network(app: &mut App, net: &Network) -> Result<()> {
    let entry = app.network_entry(net)?;
    let (_, maps) = app.datapath()?;
    maps.put_network(net.id, &entry)?;
    Ok(())
}

/// Creates a network: plan, bridge, datapath entry, then the record. Any failure undoes what
/// was made, so nothing is half-applied.
pub fn create(app: &mut App, args: &NetworkCreateArgs) -> Result<Network> {
    let NetworkPlan { network } = plan_network(app, args)?;
    realize(app, network)
}

/// Gives a planned network its id, bridge and datapath entry, then records it; undoes what was
/// made if any step fails. A crash before the record is written leaves only a bridge no record
/// owns, which reconcile removes.
fn realize(app: &mut App, mut network: Network) -> Result<Network> {
    app.datapath()?;
    network.id = app.store.write(|tx| tx.next_network_id())?;
    let result = plumb_bridge(app, &network)
        .inspect(|()| crate::sys::crash_point("network-bridge-created"))
        .and_then(|()| install_network(app, &network))
        .and_then(|()| Ok(app.store.write(|tx| tx.put_network(&network))?));
    if let Err(e) = result {
        undo_network(app, &network);
        return Err(e);
    }
    Ok(network)
}

fn undo_network(app: &mut App, net: &Network) {
    if let Ok((_, maps)) = app.datapath() {
        let _ = maps.remove_network(net.id);
    }
    if !net.bridge_external {
        let _ = app.block_on(app.nl().delete_link_named(&net.bridge));
    }
}

/// The default network `bridge`, created from the host config on first use.
pub fn ensure_default(app: &mut App) -> Result<Network> {
    if let Some(n) = app.store.network(DEFAULT_NETWORK)? {
        return Ok(n);
    }
    let s = app.config.default_network_settings()?;
    let existing = app.store.networks()?;
    let subnets: Vec<(String, Ipv4Cidr)> = existing
        .iter()
        .map(|n| (n.name.clone(), n.subnet))
        .collect();
    ipam::check_overlap(s.subnet, &subnets)?;
    let bridge_exists = app.block_on(app.nl().link(&s.bridge))?.is_some();
    if s.bridge_external && !bridge_exists {
        return Err(AppError::NotFound(format!(
            "config \"bridge\": device {} does not exist; create it or remove the key",
            s.bridge
        )));
    }
    let network = Network {
        id: 0,
        name: DEFAULT_NETWORK.into(),
        driver: "bridge".into(),
        subnet: s.subnet,
        gateway: s.gateway,
        ip_range: s.ip_range,
        internal: false,
        icc: s.icc,
        masquerade: s.masquerade,
        mtu: s.mtu,
        bridge: s.bridge.clone(),
        bridge_external: s.bridge_external,
        created: now_secs(),
    };
    realize(app, network)
}

/// Resolves a network name for an endpoint; `bridge` is created on first use.
pub fn resolve(app: &mut App, name: &str) -> Result<Network> {
    if name == DEFAULT_NETWORK {
        return ensure_default(app);
    }
    app.store.network(name)?.ok_or_else(|| {
        AppError::NotFound(format!(
            "network {name} not found; create it with `netpath network create {name}`"
        ))
    })
}

pub fn remove(app: &mut App, name: &str) -> Result<()> {
    if [DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK].contains(&name) {
        return Err(AppError::Conflict(format!(
            "{name} is a default network and cannot be removed (`netpath purge --force` removes everything)"
        )));
    }
    let net = app
        .store
        .network(name)?
        .ok_or_else(|| AppError::NotFound(format!("network {name} not found")))?;
    let users: Vec<String> = app
        .store
        .endpoints()?
        .into_iter()
        .filter(|e| e.attachments.iter().any(|a| a.network == name))
        .map(|e| e.name)
        .collect();
    if !users.is_empty() {
        return Err(AppError::Conflict(format!(
            "network {name} has endpoints: {}; remove or disconnect them first",
            users.join(", ")
        )));
    }
    let (_, maps) = app.datapath()?;
    maps.remove_network(net.id)?;
    if !net.bridge_external {
        app.block_on(app.nl().delete_link_named(&net.bridge))?;
    }
    app.store.write(|tx| tx.delete_network(name))?;
    Ok(())
}

pub fn list(app: &App) -> Result<String> {
    let endpoints = app.store.endpoints()?;
    let mut out = format!(
        "{:<16} {:<8} {:<18} {:<15} {:<12} {:<9} {}\n",
        "NAME", "DRIVER", "SUBNET", "GATEWAY", "BRIDGE", "INTERNAL", "ENDPOINTS"
    );
    for n in app.store.networks()? {
        let count = endpoints
            .iter()
            .filter(|e| e.attachments.iter().any(|a| a.network == n.name))
            .count();
        out.push_str(&format!(
            "{:<16} {:<8} {:<18} {:<15} {:<12} {:<9} {}\n",
            n.name,
            n.driver,
            n.subnet.to_string(),
            n.gateway.to_string(),
            n.bridge,
            n.internal,
            count
        ));
    }
    // The modes of `--network`, listed like Docker lists them.
    for (name, driver) in [(HOST_NETWORK, "host"), (NONE_NETWORK, "null")] {
        let count = endpoints
            .iter()
            .filter(|e| match e.mode {
                crate::model::EndpointMode::Host => name == HOST_NETWORK,
                crate::model::EndpointMode::None => name == NONE_NETWORK,
                _ => false,
            })
            .count();
        out.push_str(&format!(
            "{:<16} {:<8} {:<18} {:<15} {:<12} {:<9} {}\n",
            name, driver, "-", "-", "-", "-", count
        ));
    }
    Ok(out)
}

/// JSON for `network inspect`: the record plus its endpoints (like Docker's "Containers").
pub fn inspect(app: &App, names: &[String]) -> Result<String> {
    let endpoints = app.store.endpoints()?;
    let mut out = Vec::new();
    for name in names {
        let n = app
            .store
            .network(name)?
            .ok_or_else(|| AppError::NotFound(format!("network {name} not found")))?;
        let members: Vec<serde_json::Value> = endpoints
            .iter()
            .flat_map(|e| e.attachments.iter().filter(|a| a.network == n.name).map(move |a| (e, a)))
            .map(|(e, a)| {
                serde_json::json!({"endpoint": e.name, "ip": a.ip, "mac": a.mac, "host_veth": a.host_veth})
            })
            .collect();
        let mut v = serde_json::to_value(&n).expect("serializable");
        v["endpoints"] = serde_json::Value::Array(members);
        out.push(v);
    }
    Ok(serde_json::to_string_pretty(&out).expect("serializable"))
}

/// Gateway for endpoints' default route: the config's `default-gateway` for the default
/// network, else the network's gateway.
pub fn route_gateway(app: &App, net: &Network) -> Ipv4Addr {
    if net.name == DEFAULT_NETWORK
        && let Some(gw) = app.config.default_gateway
    {
        return gw;
    }
    net.gateway
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command, NetworkCommand};

    fn args(extra: &[&str]) -> NetworkCreateArgs {
        let argv = ["netpath", "network", "create", "n"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Network(NetworkCommand::Create(a)) => a,
            _ => unreachable!(),
        }
    }

    fn opts(extra: &[&str]) -> Result<(bool, bool, Option<u32>, Option<String>)> {
        let a = args(extra);
        let (mut icc, mut masq, mut mtu, mut bridge) = (true, true, a.mtu, a.bridge.clone());
        apply_opts(&a, &mut icc, &mut masq, &mut mtu, &mut bridge)?;
        Ok((icc, masq, mtu, bridge))
    }

    #[test]
    fn docker_driver_options_are_understood_in_long_and_short_form() {
        assert_eq!(opts(&[]).unwrap(), (true, true, None, None));
        assert_eq!(
            opts(&[
                "-o",
                "com.docker.network.bridge.enable_icc=false",
                "-o",
                "enable_ip_masquerade=false"
            ])
            .unwrap(),
            (false, false, None, None)
        );
        assert_eq!(
            opts(&["-o", "com.docker.network.driver.mtu=1400"])
                .unwrap()
                .2,
            Some(1400)
        );
        assert_eq!(
            opts(&["-o", "com.docker.network.bridge.name=br-web"])
                .unwrap()
                .3
                .as_deref(),
            Some("br-web")
        );
    }

    #[test]
    fn bad_driver_options_say_what_is_wrong() {
        let cases = [
            (vec!["-o", "enable_icc"], "KEY=VALUE"),
            (vec!["-o", "enable_icc=maybe"], "true or false"),
            (vec!["-o", "mtu=big"], "number"),
            (
                vec!["-o", "com.example.unknown=1"],
                "unknown network option",
            ),
        ];
        for (extra, needle) in cases {
            let err = opts(&extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
    }

    #[test]
    fn network_names_are_checked() {
        for ok in ["web", "my_net", "a.b-c", "N1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a/b",
            "host",
            "none",
            "container:x",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
