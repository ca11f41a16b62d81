//! Owns the command line: every command, flag and argument `netpath` accepts, as clap types.
//! Parsing values (CIDRs, MACs, addresses) happens in the commands, so errors name the flag.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "netpath",
    version,
    about = "Docker-style container networking on an eBPF datapath",
    long_about = "netpath gives network namespaces Docker-style bridge networks: IPAM, veth \
endpoints, isolation and masquerade, with forwarding and NAT done by eBPF programs instead of \
iptables. Run it as root in the network namespace it should serve."
)]
pub struct Cli {
    /// Instance to act on: its own state, pins and namespace names, so several instances can
    /// serve several network namespaces on one machine.
    #[arg(
        long,
        global = true,
        env = "NETPATH_INSTANCE",
        default_value = "default"
    )]
    pub instance: String,
    /// Host config file (daemon.json-like); default /etc/netpath[-INSTANCE]/config.json if present.
    #[arg(long, global = true, env = "NETPATH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Interface(s) masqueraded traffic leaves by (default: those holding a default route).
    #[arg(long = "uplink", global = true, value_name = "DEV")]
    pub uplinks: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks (like `docker network`).
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage endpoints: a network namespace with its interfaces (a container's network side).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Put an existing namespace on any host bridge with a static address (the pipework case).
    Attach(AttachArgs),
    /// Undo `netpath attach`.
    Detach(DetachArgs),
    /// Datapath counters: forwarded, NATed and dropped packets by reason.
    Stats,
    /// Loaded programs, attach mode, uplinks and map fill levels.
    Status,
    /// Make the kernel match the stored state (runs automatically before every change).
    Reconcile,
    /// Stay running and reconcile every INTERVAL seconds (optional: the datapath never needs a
    /// running netpath process; this only repairs drift, e.g. a deleted bridge).
    Daemon {
        #[arg(long, default_value_t = 10)]
        interval: u64,
    },
    /// Remove everything this instance made: endpoints, namespaces, bridges, pins, state.
    Purge {
        /// Required: purge cannot be undone.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create(NetworkCreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls,
    /// Show networks as JSON.
    Inspect { names: Vec<String> },
    /// Remove networks (they must have no endpoints).
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    pub name: String,
    /// Driver; only `bridge` is supported.
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form; picked from the pool (172.17-31.0.0/16, 192.168.x.0/20) if omitted.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway (the bridge's address); the first address of the subnet if omitted.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Allocate endpoint addresses from this sub-range.
    #[arg(long)]
    pub ip_range: Option<String>,
    /// No way out of the network except to its gateway.
    #[arg(long)]
    pub internal: bool,
    /// MTU of the bridge and veths.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Use this existing bridge device instead of creating one.
    #[arg(long, value_name = "EXISTING_DEV")]
    pub bridge: Option<String>,
    /// Driver options, Docker's names: com.docker.network.bridge.enable_icc=false,
    /// com.docker.network.bridge.enable_ip_masquerade=false, com.docker.network.driver.mtu=N,
    /// com.docker.network.bridge.name=DEV (short forms without the prefix work too).
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint (its namespace, veth, address, routes).
    Create(EndpointCreateArgs),
    /// Connect an endpoint to another network (adds an interface).
    Connect {
        network: String,
        name: String,
        #[arg(long)]
        ip: Option<String>,
    },
    /// Disconnect an endpoint from a network.
    Disconnect { network: String, name: String },
    /// List endpoints.
    #[command(alias = "list")]
    Ls,
    /// Show an endpoint as JSON.
    Inspect { names: Vec<String> },
    /// Remove endpoints (and the namespaces netpath created for them).
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
}

#[derive(Debug, Args)]
pub struct EndpointCreateArgs {
    pub name: String,
    /// Network to join: a network name, `none`, `host` or `container:OTHER` (like docker run --net).
    #[arg(long, visible_alias = "net", default_value = "bridge")]
    pub network: String,
    /// Address on the network (default: next free).
    #[arg(long)]
    pub ip: Option<String>,
    /// MAC of the endpoint's interface (default: 02:42 + the address, like Docker).
    #[arg(long)]
    pub mac: Option<String>,
    /// Use this existing network namespace instead of creating /run/netns/NAME.
    #[arg(long, conflicts_with = "pid")]
    pub netns: Option<PathBuf>,
    /// Use the network namespace of this process.
    #[arg(long)]
    pub pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Host bridge to attach to (it must exist).
    pub bridge: String,
    /// Namespace: a name under /run/netns or a path.
    pub netns: String,
    /// Address with prefix and optional gateway: IP/PREFIX[@GATEWAY].
    pub address: String,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth1")]
    pub ifname: String,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    pub bridge: String,
    pub netns: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("netpath").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn docker_style_commands_parse() {
        let cli = parse(&[
            "--instance",
            "t1",
            "network",
            "create",
            "web",
            "--subnet",
            "10.1.0.0/24",
            "--internal",
            "-o",
            "enable_icc=false",
        ])
        .unwrap();
        assert_eq!(cli.instance, "t1");
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!("not network create")
        };
        assert_eq!(
            (a.name.as_str(), a.subnet.as_deref(), a.internal),
            ("web", Some("10.1.0.0/24"), true)
        );
        assert_eq!(a.opts, vec!["enable_icc=false"]);

        let cli = parse(&["endpoint", "create", "db", "--net", "container:web"]).unwrap();
        let Command::Endpoint(EndpointCommand::Create(a)) = cli.command else {
            panic!("not endpoint create")
        };
        assert_eq!(a.network, "container:web");
        assert_eq!(
            parse(&["endpoint", "create", "x"])
                .map(|c| match c.command {
                    Command::Endpoint(EndpointCommand::Create(a)) => a.network,
                    _ => String::new(),
                })
                .unwrap(),
            "bridge",
            "the default network is `bridge`"
        );
        assert!(matches!(
            parse(&["network", "ls"]).unwrap().command,
            Command::Network(NetworkCommand::Ls)
        ));
        assert!(matches!(
            parse(&["network", "list"]).unwrap().command,
            Command::Network(NetworkCommand::Ls)
        ));
    }

    #[test]
    fn conflicting_or_missing_arguments_are_refused() {
        assert!(
            parse(&[
                "endpoint",
                "create",
                "x",
                "--netns",
                "/run/netns/a",
                "--pid",
                "1"
            ])
            .is_err()
        );
        assert!(parse(&["network", "create"]).is_err());
        assert!(parse(&["attach", "br0", "ns"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }
}
