//! Owns the text of Docker 28's iptables ruleset for one bridge network, in
//! `iptables-restore` format: the comparison lab (`paths.rs`, a container with published ports
//! and `--userland-proxy=false`) and the iptables scale benchmark (`scale_iptables.rs`, the
//! chains before any container, its mappings added later) both load it, so the two agree on
//! what "Docker's DNAT" is.

/// The rules Docker adds once a container's ports are published with `--userland-proxy=false`.
/// Each field holds whole lines, each ending in `\n`.
pub struct Published {
    /// raw PREROUTING: the DROP of packets for a container's address from off the bridge.
    pub raw: String,
    /// nat: each mapping's hairpin MASQUERADE (POSTROUTING) and DNAT (DOCKER).
    pub nat: String,
    /// filter: each mapping's ACCEPT in the DOCKER chain.
    pub filter: String,
}

/// Docker 28's base chains for bridge `bridge` on `subnet`. With `published` (no userland
/// proxy): the raw table, the nat OUTPUT jump for every local destination, the hairpin
/// MASQUERADE, the given per-mapping rules and filter's closing DROP. Without: the chains of a
/// host with no container yet (OUTPUT skips 127.0.0.0/8 and traffic from the bridge RETURNs);
/// filter's isolation chains are reduced, in both, to the jumps a packet to a published port
/// passes.
pub fn iptables_rules(bridge: &str, subnet: &str, published: Option<&Published>) -> String {
    let (raw, output, nat, filter) = match published {
        Some(p) => (
            format!(
                "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}COMMIT\n",
                p.raw
            ),
            String::new(),
            format!(
                "-A POSTROUTING -o {bridge} -m addrtype --src-type LOCAL -j MASQUERADE\n\
                 -A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE\n{}",
                p.nat
            ),
            format!("{}-A DOCKER ! -i {bridge} -o {bridge} -j DROP\n", p.filter),
        ),
        None => (
            String::new(),
            "! -d 127.0.0.0/8 ".to_string(),
            format!(
                "-A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE\n\
                 -A DOCKER -i {bridge} -j RETURN\n"
            ),
            String::new(),
        ),
    };
    format!(
        "{raw}*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT {output}-m addrtype --dst-type LOCAL -j DOCKER
{nat}COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
{filter}-A DOCKER-BRIDGE -o {bridge} -j DOCKER
-A DOCKER-CT -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i {bridge} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {bridge} ! -o {bridge} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o {bridge} -j DROP
COMMIT
"
    )
}
