//! Owns the command line: every command, flag and argument `netpath` accepts, as clap types.
//! Parsing values (CIDRs, MACs, addresses) happens in the commands, so errors name the flag.
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

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
    /// Publish ports: connections to a host port go to a port of an endpoint (like `docker run
    /// -p`). All mappings of one command are applied as one batch: all or nothing.
    Publish(PublishArgs),
    /// Stop publishing ports: new connections are refused at once, established ones drain.
    Unpublish(UnpublishArgs),
    /// Show published ports, like `docker port`.
    Port(PortArgs),
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
    /// Publish a port (repeatable), Docker's form: `8080:80`, `127.0.0.1::5000/udp` (free host
    /// port on 127.0.0.1), `:443` or `80` (free host port), `8000-8010:80` (first free of the
    /// range), `8000-8001:80-81`.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[[HOSTIP:]HOSTPORT[-END]:]PORT[-END][/PROTO]"
    )]
    pub publish: Vec<String>,
    /// Publish every --expose port on a free host port from the config's
    /// "published-port-range" (default 32768-60999).
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// A port the endpoint serves (repeatable); published by -P.
    #[arg(long, value_name = "PORT[-END][/PROTO]")]
    pub expose: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mappings_or_file").required(true).multiple(true).args(["mappings", "file"])))]
pub struct PublishArgs {
    /// `[HOSTIP:][HOSTPORT[-END]]:CONTAINER:PORT[-END][/tcp|/udp]`; CONTAINER is an endpoint's
    /// IPv4 address or its name; no HOSTPORT: a free one; HOSTIP `[::1]` style for IPv6.
    #[arg(value_name = "MAPPING")]
    pub mappings: Vec<String>,
    /// Read mappings from FILE, one per line (`#` starts a comment; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["mappings", "file", "endpoint"])))]
pub struct UnpublishArgs {
    /// The mappings as published (same forms); no HOSTPORT matches any host port.
    #[arg(value_name = "MAPPING")]
    pub mappings: Vec<String>,
    /// Read mappings from FILE, one per line (`#` starts a comment; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Unpublish every port of this endpoint.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["mappings", "file"])]
    pub endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    /// Endpoint whose published ports to show.
    #[arg(required_unless_present = "all")]
    pub name: Option<String>,
    /// Only this container port: prints its host addresses (`0.0.0.0:8080`).
    #[arg(value_name = "PORT[/PROTO]")]
    pub port: Option<String>,
    /// Every endpoint's published ports, grouped by endpoint.
    #[arg(long, conflicts_with_all = ["name", "port"])]
    pub all: bool,
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

    #[test]
    fn publish_commands_parse() {
        let cli = parse(&[
            "endpoint",
            "create",
            "web",
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1::5000/udp",
            "-p",
            ":443",
            "-P",
            "--expose",
            "9000",
            "--expose",
            "53/udp",
        ])
        .unwrap();
        let Command::Endpoint(EndpointCommand::Create(a)) = cli.command else {
            panic!("not endpoint create")
        };
        assert_eq!(a.publish, ["8080:80", "127.0.0.1::5000/udp", ":443"]);
        assert!(a.publish_all);
        assert_eq!(a.expose, ["9000", "53/udp"]);

        let Command::Publish(p) = parse(&["publish", "80:172.17.0.2:80", ":web:81", "-f", "-"])
            .unwrap()
            .command
        else {
            panic!("not publish")
        };
        assert_eq!(p.mappings, ["80:172.17.0.2:80", ":web:81"]);
        assert_eq!(p.file.as_deref(), Some(std::path::Path::new("-")));
        assert!(parse(&["publish"]).is_err(), "needs a mapping or -f");

        let Command::Unpublish(u) = parse(&["unpublish", "--endpoint", "web"]).unwrap().command
        else {
            panic!("not unpublish")
        };
        assert_eq!(u.endpoint.as_deref(), Some("web"));
        assert!(parse(&["unpublish"]).is_err());
        assert!(parse(&["unpublish", "--endpoint", "web", "80:web:80"]).is_err());

        let Command::Port(p) = parse(&["port", "web", "80/udp"]).unwrap().command else {
            panic!("not port")
        };
        assert_eq!(
            (p.name.as_deref(), p.port.as_deref(), p.all),
            (Some("web"), Some("80/udp"), false)
        );
        assert!(parse(&["port", "--all"]).is_ok());
        assert!(parse(&["port"]).is_err());
        assert!(parse(&["port", "web", "--all"]).is_err());
    }
}
