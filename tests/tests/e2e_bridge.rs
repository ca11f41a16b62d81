//! End to end, bridge networks: real namespaces, real veths, real sockets. Each test builds its
//! own "host" and "LAN machine" namespaces (a `Lab`) and a netpath instance of its own, and
//! tears all of it down on every exit path.
use std::net::{Ipv4Addr, SocketAddrV4};

use netpath_tests::{Lab, TcpEchoServer, UdpEchoServer, ns_output, ping, tcp_echo, udp_echo};

#[test]
fn endpoints_on_default_network_talk_over_icmp_tcp_udp() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "a"]);
    lab.netpath_ok(&["endpoint", "create", "b"]);
    let (a, b) = (lab.ip_of("a"), lab.ip_of("b"));
    assert_eq!(a, Ipv4Addr::new(172, 17, 0, 2));
    assert_eq!(b, Ipv4Addr::new(172, 17, 0, 3));
    let before = lab.stat("forwarded_local");

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
        lab.stat("forwarded_local") >= before + 4,
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
    let out = ns_output(&ns, &["ip", "-o", "link", "show", "eth0"]);
    assert!(out.contains("02:42:ac:11:00:02"), "{out}");
    assert!(out.contains("mtu 1500"), "{out}");
    let routes = ns_output(&ns, &["ip", "route"]);
    assert!(
        routes.contains("default via 172.17.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        lab.resolv_conf("web").exists(),
        "no resolv.conf for the endpoint"
    );
}

#[test]
fn networks_are_isolated_and_drops_are_counted() {
    let lab = Lab::new();
    lab.netpath_ok(&["network", "create", "front"]);
    lab.netpath_ok(&["network", "create", "back", "--subnet", "10.200.0.0/24"]);
    lab.netpath_ok(&["endpoint", "create", "f1", "--network", "front"]);
    lab.netpath_ok(&["endpoint", "create", "b1", "--network", "back"]);
    lab.netpath_ok(&["endpoint", "create", "b2", "--network", "back"]);
    let (f1, b1, b2) = (lab.ip_of("f1"), lab.ip_of("b1"), lab.ip_of("b2"));
    // `front` got the next free pool subnet after the default network's 172.17.0.0/16.
    assert_eq!(f1, Ipv4Addr::new(172, 18, 0, 2));
    assert_eq!(b1, Ipv4Addr::new(10, 200, 0, 2));

    assert!(
        ping(&lab.endpoint_ns("b1"), &b2.to_string()),
        "same network must work"
    );
    let before = lab.stat("network_isolation");
    assert!(
        !ping(&lab.endpoint_ns("f1"), &b1.to_string()),
        "front reached back"
    );
    assert!(
        !ping(&lab.endpoint_ns("b1"), &f1.to_string()),
        "back reached front"
    );
    assert!(lab.stat("network_isolation") >= before + 2);
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
    let routes = ns_output(&ns, &["ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(ping(&ns, "10.201.0.1"), "gateway must stay reachable");
    // ...and an endpoint that adds one itself is still stopped by the datapath.
    ns_output(&ns, &["ip", "route", "add", "default", "via", "10.201.0.1"]);
    let before = lab.stat("internal_network");
    assert!(
        !ping(&ns, &lab.lan_ip.to_string()),
        "internal network reached the LAN"
    );
    assert!(lab.stat("internal_network") > before);
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
    let q2 = lab.ip_of("q2");
    let before = lab.stat("icc_disabled");
    assert!(!ping(&lab.endpoint_ns("q1"), &q2.to_string()));
    assert!(lab.stat("icc_disabled") > before);
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
    assert!(lab.stat("snat_out") >= 3);
    assert!(lab.stat("snat_reply_in") >= 3);
    assert!(lab.stat("nat_mappings_created") >= 3);
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
    assert_eq!(lab.ip_of("one"), Ipv4Addr::new(172, 17, 0, 2));
    lab.netpath_ok(&["endpoint", "rm", "one"]);
    assert!(
        !lab.endpoint_ns("one").exists(),
        "namespace of a removed endpoint is left"
    );
    lab.netpath_ok(&["endpoint", "create", "three"]);
    assert_eq!(
        lab.ip_of("three"),
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
    let peer = lab.ip_of("peer");
    assert!(!ping(&lab.endpoint_ns("multi"), &peer.to_string()));
    let out = lab.netpath_ok(&["endpoint", "connect", "n2", "multi"]);
    assert!(out.contains("eth1"), "{out}");
    assert_eq!(lab.ip_on("multi", "n2"), Ipv4Addr::new(10, 202, 0, 3));
    assert!(
        ping(&lab.endpoint_ns("multi"), &peer.to_string()),
        "connected endpoint cannot reach n2"
    );
    lab.netpath_ok(&["endpoint", "disconnect", "n2", "multi"]);
    assert!(!ping(&lab.endpoint_ns("multi"), &peer.to_string()));
    // Its address on n2 is free again.
    lab.netpath_ok(&["endpoint", "create", "late", "--network", "n2"]);
    assert_eq!(lab.ip_of("late"), Ipv4Addr::new(10, 202, 0, 3));
}

#[test]
fn anti_spoofing_drops_foreign_source_addresses() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "honest"]);
    lab.netpath_ok(&["endpoint", "create", "liar"]);
    let honest = lab.ip_of("honest");
    let liar = lab.endpoint_ns("liar");
    // The liar adds an address it was not given and sends from it.
    ns_output(
        &liar,
        &["ip", "addr", "add", "172.17.0.99/16", "dev", "eth0"],
    );
    let before = lab.stat("spoofed_ip");
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
    assert!(lab.stat("spoofed_ip") > before);
}

#[test]
fn endpoints_adopt_existing_namespaces_by_path_or_pid_and_leave_them() {
    let lab = Lab::new();
    let given = netpath_tests::Netns::new(&netpath_tests::unique_name("g"));
    lab.netpath_ok(&[
        "endpoint",
        "create",
        "adopted",
        "--netns",
        given.path.to_str().unwrap(),
    ]);
    assert!(
        !lab.endpoint_ns("adopted").exists(),
        "a namespace was made although one was given"
    );
    assert!(
        ns_output(&given.path, &["ip", "-o", "addr", "show", "eth0"]).contains("172.17.0.2/16")
    );
    // A process's namespace, by PID: a sleeper started inside another namespace.
    let by_pid = netpath_tests::Netns::new(&netpath_tests::unique_name("g"));
    let mut sleeper = std::process::Command::new("nsenter")
        .arg(format!("--net={}", by_pid.path.display()))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let created = lab.netpath(&["endpoint", "create", "bypid", "--pid", &pid]);
    let ping_ok = created.status.success() && ping(&by_pid.path, "172.17.0.2");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(
        ping_ok,
        "the endpoint made in the PID's namespace cannot reach its neighbour"
    );
    // Removing the endpoints leaves the namespaces netpath did not make.
    lab.netpath_ok(&["endpoint", "rm", "adopted", "bypid"]);
    assert!(given.path.exists());
    assert!(
        !netpath_tests::ns_links(&given.path)
            .iter()
            .any(|l| l == "eth0")
    );
}
