//! End to end, bridge networks: real namespaces, real veths, real sockets. Each test builds its
//! own "host" and "LAN machine" namespaces (a `Lab`) and a netpath instance of its own, and
//! tears all of it down on every exit path.
use std::net::{Ipv4Addr, SocketAddrV4};

use netpath_tests::{Lab, TcpEchoServer, UdpEchoServer, ping, tcp_echo, udp_echo};

/// The address of `endpoint` on its first network, from `endpoint inspect`.
fn ip_of(lab: &Lab, endpoint: &str) -> Ipv4Addr {
    let json: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["endpoint", "inspect", endpoint])).unwrap();
    json["attachments"][0]["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn ip_on(lab: &Lab, endpoint: &str, network: &str) -> Ipv4Addr {
    let json: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["endpoint", "inspect", endpoint])).unwrap();
    let att = json["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["network"] == network)
        .unwrap();
    att["ip"].as_str().unwrap().parse().unwrap()
}

/// Value of one counter (or drop reason) in `netpath stats`.
fn stat(lab: &Lab, name: &str) -> u64 {
    let out = lab.netpath_ok(&["stats"]);
    out.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| parts.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{out}"))
}

#[test]
fn endpoints_on_default_network_talk_over_icmp_tcp_udp() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "a"]);
    lab.netpath_ok(&["endpoint", "create", "b"]);
    let (a, b) = (ip_of(&lab, "a"), ip_of(&lab, "b"));
    assert_eq!(a, Ipv4Addr::new(172, 17, 0, 2));
    assert_eq!(b, Ipv4Addr::new(172, 17, 0, 3));
    let before = stat(&lab, "forwarded_local");

    assert!(
        ping(&lab.endpoint_ns("a"), &b.to_string()),
        "a cannot ping b"
    );
    let tcp = TcpEchoServer::start(&lab.endpoint_ns("b"), SocketAddrV4::new(b, 7000));
    let (echo, local) = tcp_echo(
        &lab.endpoint_ns("a"),
        SocketAddrV4::new(b, 7000),
        b"hello tcp",
    )
    .unwrap();
    assert_eq!(echo, b"hello tcp");
    assert_eq!(local.ip(), std::net::IpAddr::V4(a));
    assert!(
        tcp.peers()
            .iter()
            .any(|p| p.ip() == std::net::IpAddr::V4(a)),
        "server saw {:?}",
        tcp.peers()
    );
    let udp = UdpEchoServer::start(&lab.endpoint_ns("b"), SocketAddrV4::new(b, 7001));
    assert_eq!(
        udp_echo(
            &lab.endpoint_ns("a"),
            SocketAddrV4::new(b, 7001),
            b"hello udp"
        )
        .unwrap(),
        b"hello udp"
    );
    assert!(
        udp.peers()
            .iter()
            .any(|p| p.ip() == std::net::IpAddr::V4(a))
    );

    // Those packets took the eBPF short cut, not the bridge.
    assert!(
        stat(&lab, "forwarded_local") >= before + 4,
        "{}",
        lab.netpath_ok(&["stats"])
    );
    // The host reaches endpoints through the bridge, and endpoints reach their gateway.
    assert!(ping(&lab.host.path, &a.to_string()));
    assert!(ping(&lab.endpoint_ns("a"), "172.17.0.1"));
}

#[test]
fn endpoint_gets_route_mac_mtu_and_resolv_conf() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "web"]);
    let ns = lab.endpoint_ns("web");
    let out =
        String::from_utf8(lab_ns_cmd(&ns, &["ip", "-o", "link", "show", "eth0"]).stdout).unwrap();
    assert!(out.contains("02:42:ac:11:00:02"), "{out}");
    assert!(out.contains("mtu 1500"), "{out}");
    let routes = String::from_utf8(lab_ns_cmd(&ns, &["ip", "route"]).stdout).unwrap();
    assert!(
        routes.contains("default via 172.17.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        lab.resolv_conf("web").exists(),
        "no resolv.conf for the endpoint"
    );
}

fn lab_ns_cmd(ns: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn networks_are_isolated_and_drops_are_counted() {
    let lab = Lab::new();
    lab.netpath_ok(&["network", "create", "front"]);
    lab.netpath_ok(&["network", "create", "back", "--subnet", "10.200.0.0/24"]);
    lab.netpath_ok(&["endpoint", "create", "f1", "--network", "front"]);
    lab.netpath_ok(&["endpoint", "create", "b1", "--network", "back"]);
    lab.netpath_ok(&["endpoint", "create", "b2", "--network", "back"]);
    let (f1, b1, b2) = (ip_of(&lab, "f1"), ip_of(&lab, "b1"), ip_of(&lab, "b2"));
    // `front` got the next free pool subnet after the default network's 172.17.0.0/16.
    assert_eq!(f1, Ipv4Addr::new(172, 18, 0, 2));
    assert_eq!(b1, Ipv4Addr::new(10, 200, 0, 2));

    assert!(
        ping(&lab.endpoint_ns("b1"), &b2.to_string()),
        "same network must work"
    );
    let before = stat(&lab, "network_isolation");
    assert!(
        !ping(&lab.endpoint_ns("f1"), &b1.to_string()),
        "front reached back"
    );
    assert!(
        !ping(&lab.endpoint_ns("b1"), &f1.to_string()),
        "back reached front"
    );
    assert!(stat(&lab, "network_isolation") >= before + 2);
    // The host still reaches every network.
    assert!(ping(&lab.host.path, &f1.to_string()));
    assert!(ping(&lab.host.path, &b1.to_string()));
}

#[test]
fn internal_network_has_no_way_out_but_its_gateway() {
    let lab = Lab::new();
    lab.netpath_ok(&[
        "network",
        "create",
        "vault",
        "--internal",
        "--subnet",
        "10.201.0.0/24",
    ]);
    lab.netpath_ok(&["endpoint", "create", "v1", "--network", "vault"]);
    let ns = lab.endpoint_ns("v1");
    // Like Docker, an internal network gives its endpoints no default route...
    let routes = String::from_utf8(lab_ns_cmd(&ns, &["ip", "route"]).stdout).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(ping(&ns, "10.201.0.1"), "gateway must stay reachable");
    // ...and an endpoint that adds one itself is still stopped by the datapath.
    lab_ns_cmd(&ns, &["ip", "route", "add", "default", "via", "10.201.0.1"]);
    let before = stat(&lab, "internal_network");
    assert!(
        !ping(&ns, &lab.lan_ip.to_string()),
        "internal network reached the LAN"
    );
    assert!(stat(&lab, "internal_network") > before);
}

#[test]
fn icc_false_blocks_endpoints_of_one_network() {
    let lab = Lab::new();
    lab.netpath_ok(&[
        "network",
        "create",
        "quiet",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
    ]);
    lab.netpath_ok(&["endpoint", "create", "q1", "--network", "quiet"]);
    lab.netpath_ok(&["endpoint", "create", "q2", "--network", "quiet"]);
    let q2 = ip_of(&lab, "q2");
    let before = stat(&lab, "icc_disabled");
    assert!(!ping(&lab.endpoint_ns("q1"), &q2.to_string()));
    assert!(stat(&lab, "icc_disabled") > before);
    assert!(
        ping(&lab.host.path, &q2.to_string()),
        "host must still reach the endpoint"
    );
}

#[test]
fn masquerade_shows_the_host_address_and_replies_come_back() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "out"]);
    let ns = lab.endpoint_ns("out");
    let server = TcpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 8080));
    let (echo, _) = tcp_echo(&ns, SocketAddrV4::new(lab.lan_ip, 8080), b"through nat").unwrap();
    assert_eq!(echo, b"through nat");
    let peers = server.peers();
    assert!(!peers.is_empty());
    for p in &peers {
        assert_eq!(
            p.ip(),
            std::net::IpAddr::V4(lab.host_uplink_ip),
            "LAN saw {p}, not the host address"
        );
    }
    let udp = UdpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 5353));
    assert_eq!(
        udp_echo(&ns, SocketAddrV4::new(lab.lan_ip, 5353), b"dns?").unwrap(),
        b"dns?"
    );
    assert!(
        udp.peers()
            .iter()
            .all(|p| p.ip() == std::net::IpAddr::V4(lab.host_uplink_ip))
    );
    assert!(
        ping(&ns, &lab.lan_ip.to_string()),
        "ICMP echo through masquerade"
    );
    assert!(stat(&lab, "snat_out") >= 3);
    assert!(stat(&lab, "snat_reply_in") >= 3);
    assert!(stat(&lab, "nat_mappings_created") >= 3);
    // The conntrack map holds the flows (read straight from the pinned map).
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(lab.pin_dir().join("NP_CT"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("nat_port"), "{dump}");
}

#[test]
fn removing_an_endpoint_frees_its_address_and_namespace() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "one"]);
    lab.netpath_ok(&["endpoint", "create", "two"]);
    assert_eq!(ip_of(&lab, "one"), Ipv4Addr::new(172, 17, 0, 2));
    lab.netpath_ok(&["endpoint", "rm", "one"]);
    assert!(
        !lab.endpoint_ns("one").exists(),
        "namespace of a removed endpoint is left"
    );
    lab.netpath_ok(&["endpoint", "create", "three"]);
    assert_eq!(
        ip_of(&lab, "three"),
        Ipv4Addr::new(172, 17, 0, 2),
        "freed address not reused"
    );
    // An explicit address that is taken is refused, naming the owner.
    let err = lab.netpath_err(&["endpoint", "create", "four", "--ip", "172.17.0.3"]);
    assert!(err.contains("two"), "{err}");
    assert!(!lab.endpoint_ns("four").exists());
    let ls = lab.netpath_ok(&["endpoint", "ls"]);
    assert!(!ls.contains("four") && !ls.contains("one "), "{ls}");
}

#[test]
fn endpoint_connects_to_a_second_network() {
    let lab = Lab::new();
    lab.netpath_ok(&["network", "create", "n2", "--subnet", "10.202.0.0/24"]);
    lab.netpath_ok(&["endpoint", "create", "multi"]);
    lab.netpath_ok(&["endpoint", "create", "peer", "--network", "n2"]);
    let peer = ip_of(&lab, "peer");
    assert!(!ping(&lab.endpoint_ns("multi"), &peer.to_string()));
    let out = lab.netpath_ok(&["endpoint", "connect", "n2", "multi"]);
    assert!(out.contains("eth1"), "{out}");
    assert_eq!(ip_on(&lab, "multi", "n2"), Ipv4Addr::new(10, 202, 0, 3));
    assert!(
        ping(&lab.endpoint_ns("multi"), &peer.to_string()),
        "connected endpoint cannot reach n2"
    );
    lab.netpath_ok(&["endpoint", "disconnect", "n2", "multi"]);
    assert!(!ping(&lab.endpoint_ns("multi"), &peer.to_string()));
    // Its address on n2 is free again.
    lab.netpath_ok(&["endpoint", "create", "late", "--network", "n2"]);
    assert_eq!(ip_of(&lab, "late"), Ipv4Addr::new(10, 202, 0, 3));
}

#[test]
fn anti_spoofing_drops_foreign_source_addresses() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "honest"]);
    lab.netpath_ok(&["endpoint", "create", "liar"]);
    let honest = ip_of(&lab, "honest");
    let liar = lab.endpoint_ns("liar");
    // The liar adds an address it was not given and sends from it.
    lab_ns_cmd(
        &liar,
        &["ip", "addr", "add", "172.17.0.99/16", "dev", "eth0"],
    );
    let before = stat(&lab, "spoofed_ip");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", liar.display()))
        .args([
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "172.17.0.99",
            &honest.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "spoofed ping got an answer");
    assert!(stat(&lab, "spoofed_ip") > before);
}
