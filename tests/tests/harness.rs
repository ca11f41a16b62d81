//! Tests of the test harness itself (needs root): labs come up with working plain-kernel paths
//! between host and LAN, the traffic helpers move real bytes, names are unique, and nothing is
//! left once a lab is dropped, also after a panic. No netpath command runs here.
use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddrV4},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use netpath_tests::{
    Lab, Netns, TcpEchoServer, UNIQUE_NAME_LEN, UdpEchoServer, connect_in, in_netns, ping,
    tcp_echo, udp_echo, unique_name,
};

/// The names `ip netns list` shows.
fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Identity of the network namespace of the calling thread.
fn current_netns() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("read /proc/thread-self/ns/net")
}

#[test]
fn unique_names_are_short_distinct_and_valid_instance_names() {
    let names: Vec<String> = (0..2000).map(|_| unique_name("t")).collect();
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "duplicate names");
    for n in &names {
        assert!(n.len() <= UNIQUE_NAME_LEN, "{n} too long");
        assert!(n.starts_with('t'), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{n}"
        );
    }
    // The process id is part of the name, so parallel test processes do not collide.
    let pid = format!("{:04x}", std::process::id() & 0xffff);
    assert_eq!(&names[0][1..5], pid);
    assert!(
        std::panic::catch_unwind(|| unique_name("9x")).is_err(),
        "a tag must start with a letter"
    );
}

#[test]
fn lab_host_and_lan_reach_each_other() {
    let lab = Lab::new();
    assert!(lab.instance.len() <= UNIQUE_NAME_LEN);
    assert!(lab.host.path.exists() && lab.lan.path.exists());
    assert!(
        ping(&lab.host.path, &lab.lan_ip.to_string()),
        "host cannot ping the LAN machine"
    );
    assert!(
        ping(&lab.lan.path, &lab.host_uplink_ip.to_string()),
        "LAN machine cannot ping the host"
    );
    // The host's default route goes to the LAN machine, and it forwards.
    let routes = String::from_utf8_lossy(&lab.host.run_ok(&["ip", "route"]).stdout).into_owned();
    assert!(
        routes.contains(&format!("default via {}", lab.lan_ip)),
        "{routes}"
    );
    let fwd = lab.host.run_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    // Neither end of the uplink is in the machine's own namespace.
    let here = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    let here = String::from_utf8_lossy(&here.stdout);
    assert!(
        !here
            .lines()
            .any(|l| l.contains(": up0@") || l.contains(": lan0@")),
        "{here}"
    );
    // A negative control: an address nobody has is not answered, so `ping` can fail.
    let [a, b, c, _] = lab.lan_ip.octets();
    assert!(!ping(&lab.host.path, &format!("{a}.{b}.{c}.99")));
}

#[test]
fn tcp_and_udp_echo_between_host_and_lan() {
    let lab = Lab::new();
    let tcp = TcpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 7000));
    let (echo, local) = tcp_echo(
        &lab.host.path,
        SocketAddrV4::new(lab.lan_ip, 7000),
        b"hello over tcp",
    )
    .unwrap();
    assert_eq!(echo, b"hello over tcp");
    assert_eq!(local.ip(), IpAddr::V4(lab.host_uplink_ip));
    assert_eq!(tcp.peers(), vec![local], "server saw other peers");

    let udp = UdpEchoServer::start(&lab.host.path, SocketAddrV4::new(lab.host_uplink_ip, 7001));
    let echo = udp_echo(
        &lab.lan.path,
        SocketAddrV4::new(lab.host_uplink_ip, 7001),
        b"hello over udp",
    )
    .unwrap();
    assert_eq!(echo, b"hello over udp");
    assert_eq!(udp.peers().len(), 1);
    assert_eq!(udp.peers()[0].ip(), IpAddr::V4(lab.lan_ip));

    // Nothing listens on this port: the helpers report the failure instead of hanging.
    assert!(tcp_echo(&lab.host.path, SocketAddrV4::new(lab.lan_ip, 7002), b"x").is_err());
    assert!(
        udp_echo(
            &lab.lan.path,
            SocketAddrV4::new(lab.host_uplink_ip, 7003),
            b"x"
        )
        .is_err()
    );
}

#[test]
fn long_lived_connection_is_usable_from_other_threads() {
    let lab = Lab::new();
    let server = TcpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 7100));
    let mut stream = connect_in(&lab.host.path, SocketAddrV4::new(lab.lan_ip, 7100));
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for round in 0..3 {
        // Each round on another thread that never entered the host namespace.
        stream = std::thread::spawn(move || {
            let msg = format!("round {round}");
            stream.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0; msg.len()];
            stream.read_exact(&mut buf).unwrap();
            assert_eq!(buf, msg.as_bytes());
            stream
        })
        .join()
        .unwrap();
    }
    assert_eq!(
        server.peers().len(),
        1,
        "one connection, not a reconnect per round"
    );
}

#[test]
fn in_netns_runs_inside_and_leaves_the_caller_where_it_was() {
    let ns = Netns::new(&unique_name("n"));
    let before = current_netns();
    let inside = in_netns(&ns.path, current_netns);
    assert_ne!(inside, before, "closure did not run in the namespace");
    assert_eq!(current_netns(), before, "caller thread changed namespace");
    // Only loopback exists there, and it is up.
    let links =
        String::from_utf8_lossy(&ns.run_ok(&["ip", "-o", "link", "show"]).stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
}

#[test]
fn run_ok_failure_shows_the_command_and_its_stderr() {
    let ns = Netns::new(&unique_name("n"));
    let err =
        std::panic::catch_unwind(|| ns.run_ok(&["ip", "link", "show", "nosuchdev"])).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("ip link show nosuchdev"), "{msg}");
    assert!(msg.contains("nosuchdev") && msg.contains("stderr"), "{msg}");
    assert!(!ns.run(&["false"]).status.success());
}

#[test]
fn dropping_a_lab_removes_its_namespaces_also_after_a_panic() {
    let lab = Lab::new();
    let names = [lab.host.name.clone(), lab.lan.name.clone()];
    assert!(
        names.iter().all(|n| netns_list().contains(n)),
        "{:?} not in {:?}",
        names,
        netns_list()
    );
    drop(lab);
    let left = netns_list();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "{names:?} left in {left:?}"
    );

    let made = std::panic::catch_unwind(|| {
        let lab = Lab::new();
        let names = [lab.host.name.clone(), lab.lan.name.clone()];
        // Something the instance would make, to see the sweep remove it too.
        std::mem::forget(Netns::new(&format!("{}-ep", lab.instance)));
        assert!(lab.endpoint_ns("ep").exists());
        std::panic::panic_any(names);
    })
    .unwrap_err();
    let names = made.downcast_ref::<[String; 2]>().expect("the lab's names");
    let left = netns_list();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "{names:?} left in {left:?} after a panic"
    );
    let instance = names[0].trim_end_matches('h');
    assert!(
        !left.iter().any(|n| n.starts_with(&format!("{instance}-"))),
        "endpoint namespace left: {left:?}"
    );
}
