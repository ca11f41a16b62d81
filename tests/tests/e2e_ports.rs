//! End to end, published ports: every `publish`/`-p`/`-P` form with real sockets from a LAN
//! machine and from the host itself, the 127.0.0.1 promise, hairpin, unpublish, conflicts,
//! batches, and published traffic across a netpath restart.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    time::Duration,
};

use netpath_tests::{
    Lab, TcpEchoServer, UdpEchoServer, connect_in, in_netns, ns_output, tcp_echo, udp_echo,
};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Whether this kernel serves host processes (README: host-local access needs Linux >= 5.14,
/// where the cgroup programs can tell namespaces apart). Below that netpath runs without them
/// and must say so in `netpath status`, which is checked here; the callers then check that a
/// host process is refused instead of served.
fn host_sockets_served(lab: &Lab) -> bool {
    if netpath::sys::kernel_version() >= (5, 14) {
        return true;
    }
    let status = lab.netpath_ok(&["status"]);
    assert!(
        status.contains("not attached (host sockets need Linux >= 5.14"),
        "netpath status must say why host sockets are not served on this kernel:\n{status}"
    );
    eprintln!("Linux < 5.14: host-local access is not served; checking that it is refused");
    false
}

/// `netpath port NAME` as (container side, host side) pairs, e.g. ("80/tcp", "0.0.0.0:8080").
fn ports_of(lab: &Lab, endpoint: &str) -> Vec<(String, String)> {
    lab.netpath_ok(&["port", endpoint])
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(c, h)| (c.trim().to_string(), h.trim().to_string()))
        .collect()
}

/// The host port a container port was published on (the first, if several).
fn host_port(lab: &Lab, endpoint: &str, container: &str) -> u16 {
    ports_of(lab, endpoint)
        .into_iter()
        .find(|(c, _)| c == container)
        .and_then(|(_, h)| h.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{container} of {endpoint} is not published: {:?}",
                ports_of(lab, endpoint)
            )
        })
}

#[test]
fn published_tcp_and_udp_reach_the_endpoint_from_the_lan_with_the_real_source() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "web"]);
    let web = lab.ip_of("web");
    lab.netpath_ok(&["publish", &format!("8080:{web}:80")]);
    lab.netpath_ok(&["publish", "5353:web:53/udp"]);
    assert_eq!(
        ports_of(&lab, "web"),
        vec![
            ("53/udp".into(), "0.0.0.0:5353".into()),
            ("80/tcp".into(), "0.0.0.0:8080".into())
        ]
    );

    let tcp = TcpEchoServer::start(&lab.endpoint_ns("web"), v4(web, 80));
    let (echo, _) = tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 8080), b"GET /").unwrap();
    assert_eq!(echo, b"GET /");
    assert_eq!(tcp.peers().len(), 1);
    assert_eq!(
        tcp.peers()[0].ip(),
        IpAddr::V4(lab.lan_ip),
        "the server must see the client's own address"
    );

    let udp = UdpEchoServer::start(&lab.endpoint_ns("web"), v4(web, 53));
    for i in 0..3 {
        let msg = format!("query {i}");
        assert_eq!(
            udp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 5353), msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
    }
    assert!(udp.peers().iter().all(|p| p.ip() == IpAddr::V4(lab.lan_ip)));
    assert!(lab.stat("dnat_in") >= 4, "{}", lab.netpath_ok(&["stats"]));
}

#[test]
fn docker_p_forms_on_endpoint_create_and_port_listing() {
    let lab = Lab::new();
    lab.netpath_ok(&[
        "endpoint",
        "create",
        "app",
        "-p",
        "8081:80",
        "-p",
        "127.0.0.1::5000/udp",
        "-p",
        ":443",
        "-p",
        "9000-9001:7000-7001",
    ]);
    let ports = ports_of(&lab, "app");
    let find = |c: &str| {
        ports
            .iter()
            .filter(|(k, _)| k == c)
            .map(|(_, h)| h.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(find("80/tcp"), vec!["0.0.0.0:8081"]);
    assert_eq!(find("7000/tcp"), vec!["0.0.0.0:9000"]);
    assert_eq!(find("7001/tcp"), vec!["0.0.0.0:9001"]);
    let udp = find("5000/udp");
    assert_eq!(udp.len(), 1);
    assert!(udp[0].starts_with("127.0.0.1:"), "{udp:?}");
    let random: u16 = find("443/tcp")[0]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (32768..=60999).contains(&random),
        "random host port {random} outside the default range"
    );
    // One container port, filtered like `docker port app 80/tcp`.
    assert_eq!(
        lab.netpath_ok(&["port", "app", "80/tcp"]).trim(),
        "0.0.0.0:8081"
    );
    let all = lab.netpath_ok(&["port", "--all"]);
    assert!(all.contains("app") && all.contains("0.0.0.0:8081"), "{all}");

    let server = TcpEchoServer::start(&lab.endpoint_ns("app"), v4(lab.ip_of("app"), 7001));
    tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 9001), b"range").unwrap();
    assert_eq!(server.peers().len(), 1);
}

#[test]
fn publish_all_exposed_ports_on_random_host_ports() {
    let lab = Lab::new();
    lab.netpath_ok(&[
        "endpoint", "create", "svc", "-P", "--expose", "80", "--expose", "53/udp",
    ]);
    let tcp_port = host_port(&lab, "svc", "80/tcp");
    let udp_port = host_port(&lab, "svc", "53/udp");
    assert_ne!(tcp_port, 0);
    let svc = lab.ip_of("svc");
    let _t = TcpEchoServer::start(&lab.endpoint_ns("svc"), v4(svc, 80));
    let _u = UdpEchoServer::start(&lab.endpoint_ns("svc"), v4(svc, 53));
    tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, tcp_port), b"-P tcp").unwrap();
    assert_eq!(
        udp_echo(&lab.lan.path, v4(lab.host_uplink_ip, udp_port), b"-P udp").unwrap(),
        b"-P udp"
    );
}

#[test]
fn port_ranges_pick_the_first_free_port() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "a"]);
    lab.netpath_ok(&["endpoint", "create", "b"]);
    lab.netpath_ok(&["publish", "8000-8010:a:80"]);
    lab.netpath_ok(&["publish", "8000-8010:b:80"]);
    assert_eq!(host_port(&lab, "a", "80/tcp"), 8000);
    assert_eq!(host_port(&lab, "b", "80/tcp"), 8001);
    let _srv = TcpEchoServer::start(&lab.endpoint_ns("b"), v4(lab.ip_of("b"), 80));
    tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 8001), b"b").unwrap();
}

#[test]
fn a_loopback_published_port_is_reachable_from_the_host_only() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "db"]);
    let db = lab.ip_of("db");
    lab.netpath_ok(&["publish", &format!("127.0.0.1:5432:{db}:5432")]);
    let server = TcpEchoServer::start(&lab.endpoint_ns("db"), v4(db, 5432));

    if host_sockets_served(&lab) {
        // From the host: no proxy, the socket is translated at connect time, and the client
        // sees the address it dialled.
        let (echo, _) = tcp_echo(&lab.host.path, v4(LOCALHOST, 5432), b"local").unwrap();
        assert_eq!(echo, b"local");
        let peer = in_netns(&lab.host.path, || {
            let s = std::net::TcpStream::connect_timeout(
                &SocketAddr::V4(v4(LOCALHOST, 5432)),
                Duration::from_secs(2),
            )
            .unwrap();
            s.peer_addr().unwrap()
        });
        assert_eq!(
            peer,
            SocketAddr::V4(v4(LOCALHOST, 5432)),
            "getpeername must show the dialled address"
        );
        assert!(server.wait_for_peers(2).len() >= 2);
    } else {
        assert!(tcp_echo(&lab.host.path, v4(LOCALHOST, 5432), b"local").is_err());
    }

    // From the LAN: neither the host address nor the endpoint address reaches it.
    assert!(tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 5432), b"x").is_err());
    ns_output(
        &lab.lan.path,
        &[
            "ip",
            "route",
            "add",
            "172.17.0.0/16",
            "via",
            &lab.host_uplink_ip.to_string(),
        ],
    );
    let before = lab.stat("host_only_port");
    assert!(
        tcp_echo(&lab.lan.path, v4(db, 5432), b"x").is_err(),
        "the LAN reached a loopback-only port directly"
    );
    assert!(lab.stat("host_only_port") > before);
    assert!(
        server
            .peers()
            .iter()
            .all(|p| p.ip() != IpAddr::V4(lab.lan_ip))
    );
}

#[test]
fn host_processes_reach_published_ports_through_host_addresses_too() {
    let lab = Lab::new();
    lab.netpath_ok(&[
        "endpoint",
        "create",
        "web",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
    ]);
    let web = lab.ip_of("web");
    let _t = TcpEchoServer::start(&lab.endpoint_ns("web"), v4(web, 80));
    let _u = UdpEchoServer::start(&lab.endpoint_ns("web"), v4(web, 53));
    let served = host_sockets_served(&lab);
    for addr in [LOCALHOST, lab.host_uplink_ip, Ipv4Addr::new(172, 17, 0, 1)] {
        if !served {
            assert!(
                tcp_echo(&lab.host.path, v4(addr, 8080), b"host").is_err(),
                "a host process reached {addr}:8080 without the cgroup programs"
            );
            continue;
        }
        let (echo, _) = tcp_echo(&lab.host.path, v4(addr, 8080), b"host")
            .unwrap_or_else(|e| panic!("tcp via {addr}: {e}"));
        assert_eq!(echo, b"host");
        assert_eq!(
            udp_echo(&lab.host.path, v4(addr, 5353), b"udp")
                .unwrap_or_else(|e| panic!("udp via {addr}: {e}")),
            b"udp"
        );
    }
}

#[test]
fn hairpin_reaches_own_and_neighbour_published_ports() {
    let lab = Lab::new();
    lab.netpath_ok(&["network", "create", "other"]);
    lab.netpath_ok(&["endpoint", "create", "srv", "-p", "8080:80"]);
    lab.netpath_ok(&["endpoint", "create", "nbr"]);
    lab.netpath_ok(&["endpoint", "create", "far", "--network", "other"]);
    let _srv = TcpEchoServer::start(&lab.endpoint_ns("srv"), v4(lab.ip_of("srv"), 80));
    for client in ["srv", "nbr", "far"] {
        let (echo, _) = tcp_echo(
            &lab.endpoint_ns(client),
            v4(lab.host_uplink_ip, 8080),
            client.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("hairpin from {client}: {e}"));
        assert_eq!(echo, client.as_bytes());
    }
}

/// Conntrack entries whose source or destination is `addr` (IPv4).
fn flows_touching(lab: &Lab, addr: Ipv4Addr) -> usize {
    let maps = netpath::datapath::maps::Maps::open(&lab.pin_dir()).unwrap();
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr.octets());
    maps.conntrack_entries()
        .iter()
        .filter(|(k, _)| k.src_addr == a || k.dst_addr == a)
        .count()
}

#[test]
fn removing_a_hairpin_client_removes_the_flows_whose_replies_went_to_it() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "srv", "-p", "8080:80"]);
    lab.netpath_ok(&["endpoint", "create", "nbr"]);
    let nbr = lab.ip_of("nbr");
    let _srv = TcpEchoServer::start(&lab.endpoint_ns("srv"), v4(lab.ip_of("srv"), 80));
    let (echo, _) = tcp_echo(&lab.endpoint_ns("nbr"), v4(lab.host_uplink_ip, 8080), b"hi")
        .expect("hairpin from nbr");
    assert_eq!(echo, b"hi");
    // srv's replies went to nbr: that flow's entry (with its cached way into nbr) is there.
    assert!(flows_touching(&lab, nbr) > 0);
    lab.netpath_ok(&["endpoint", "rm", "nbr"]);
    assert_eq!(flows_touching(&lab, nbr), 0, "flows left to or from nbr");
}

#[test]
fn unpublish_stops_new_connections_and_drains_established_ones() {
    let lab = Lab::new();
    let (_srv, mut live) = live_published_connection(&lab);
    lab.netpath_ok(&["unpublish", "8080:web:80"]);
    assert!(ports_of(&lab, "web").is_empty());
    assert!(
        tcp_echo(&lab.lan.path, v4(lab.host_uplink_ip, 8080), b"new").is_err(),
        "new connection after unpublish"
    );
    roundtrip(&mut live, b"established drains");
}

/// Endpoint `web` with port 80 published as 8080 and an echo server, and a LAN connection to
/// it that has already carried one round trip.
fn live_published_connection(lab: &Lab) -> (TcpEchoServer, std::net::TcpStream) {
    lab.netpath_ok(&["endpoint", "create", "web", "-p", "8080:80"]);
    let server = TcpEchoServer::start(&lab.endpoint_ns("web"), v4(lab.ip_of("web"), 80));
    let mut live = connect_in(&lab.lan.path, v4(lab.host_uplink_ip, 8080));
    live.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    roundtrip(&mut live, b"before");
    (server, live)
}

fn roundtrip(stream: &mut std::net::TcpStream, msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

#[test]
fn conflicting_and_bad_publishes_are_refused_with_nothing_changed() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "web", "-p", "8080:80"]);
    lab.netpath_ok(&["endpoint", "create", "db"]);
    let db = lab.ip_of("db").to_string();
    // A host process already listening on a port.
    let _listener = in_netns(&lab.host.path, || {
        TcpListener::bind("0.0.0.0:7777").unwrap()
    });
    let before = lab.netpath_ok(&["port", "--all"]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["publish".into(), format!("8080:{db}:80")], "web"),
        (
            vec!["publish".into(), format!("10.99.99.99:8080:{db}:80")],
            "not",
        ),
        (vec!["publish".into(), format!("7777:{db}:80")], "7777"),
        (vec!["publish".into(), format!("0:{db}:80")], "0"),
        (vec!["publish".into(), format!("70000:{db}:80")], "70000"),
        (
            vec!["publish".into(), format!("8010-8000:{db}:80")],
            "8010-8000",
        ),
        (
            vec!["publish".into(), format!("8000-8002:{db}:80-81")],
            "range",
        ),
        (vec!["publish".into(), format!("8000:{db}:80/sctp")], "sctp"),
        (
            vec!["publish".into(), "8000:172.17.9.9:80".into()],
            "172.17.9.9",
        ),
        (vec!["publish".into(), "8000:nosuch:80".into()], "nosuch"),
        (vec!["publish".into(), "[::1]:8000:db:80".into()], "IPv6"),
        (
            vec![
                "endpoint".into(),
                "create".into(),
                "x".into(),
                "-p".into(),
                "8080:80".into(),
            ],
            "web",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = lab.netpath_err(&args);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: expected {needle:?} in: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert_eq!(
            lab.netpath_ok(&["port", "--all"]),
            before,
            "{args:?} changed the published ports"
        );
    }
    assert!(
        !lab.netpath_ok(&["endpoint", "ls"]).contains("\nx "),
        "a refused endpoint create left an endpoint"
    );
}

#[test]
fn a_batch_file_applies_all_or_nothing() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "web"]);
    let dir = std::env::temp_dir().join(format!("netpath-batch-{}", lab.instance));
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = DirGuard(dir.clone());
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        "# web ports\n8080:web:80\n8443:web:443\n5353:web:53/udp\n",
    )
    .unwrap();
    lab.netpath_ok(&["publish", "-f", good.to_str().unwrap()]);
    assert_eq!(ports_of(&lab, "web").len(), 3);
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "9001:web:81\n9002:web:82\n9003:web:99999\n").unwrap();
    let err = lab.netpath_err(&["publish", "-f", bad.to_str().unwrap()]);
    assert!(
        err.contains("99999") && err.contains('3'),
        "the error must name the bad line: {err}"
    );
    assert_eq!(
        ports_of(&lab, "web").len(),
        3,
        "a failed batch applied some of its lines"
    );
}

struct DirGuard(std::path::PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn published_traffic_survives_a_netpath_reload_and_endpoint_removal_unpublishes() {
    let lab = Lab::new();
    let (_srv, mut live) = live_published_connection(&lab);
    let version =
        std::path::PathBuf::from(format!("/run/netpath-{}/datapath/version", lab.instance));
    std::fs::remove_file(&version).unwrap();
    lab.netpath_ok(&["endpoint", "create", "other"]);
    roundtrip(&mut live, b"after reload");
    tcp_echo(
        &lab.lan.path,
        v4(lab.host_uplink_ip, 8080),
        b"new after reload",
    )
    .unwrap();
    drop(live);
    lab.netpath_ok(&["endpoint", "rm", "web"]);
    assert!(!lab.netpath_ok(&["port", "--all"]).contains("8080"));
    lab.netpath_ok(&["publish", "8080:other:80"]);
}
