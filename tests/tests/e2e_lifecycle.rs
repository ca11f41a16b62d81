//! End to end, lifecycle: netpath restarts and upgrades under live connections, crashes at
//! every step of a change, several instances at once, the `--network` modes, the pipework
//! attach, the host config file, the netlink attach mode, and every refusal leaving nothing
//! changed.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use netpath::datapath::{migrate, syscall};
use netpath_common::map_name;
use netpath_tests::{
    Lab, Netns, TcpEchoServer, connect_in, netpath_bin, ns_links, ns_output, ping, tcp_echo,
    unique_name,
};

/// Runs netpath in the lab's host namespace with extra environment variables.
fn netpath_env(lab: &Lab, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.host.path.display()))
        .arg(netpath_bin())
        .arg("--instance")
        .arg(&lab.instance)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A background process killed (SIGKILL) and reaped when dropped, test failure included.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(lab: &Lab) -> Background {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", lab.host.path.display()))
        .arg(netpath_bin())
        .args(["--instance", &lab.instance, "daemon", "--interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Background(child)
}

fn roundtrip(stream: &mut std::net::TcpStream, msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

/// Host-namespace device names netpath made (`np…`), sorted.
fn netpath_devices(lab: &Lab) -> Vec<String> {
    let mut names: Vec<String> = ns_links(&lab.host.path)
        .into_iter()
        .filter(|n| n.starts_with("np"))
        .collect();
    names.sort();
    names
}

#[test]
fn established_connections_survive_kill_restart_and_upgrade() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "c1"]);
    lab.netpath_ok(&["endpoint", "create", "c2"]);
    let c2 = lab.ip_of("c2");
    let lan_server = TcpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 9000));
    let local_server = TcpEchoServer::start(&lab.endpoint_ns("c2"), SocketAddrV4::new(c2, 9001));
    let mut to_lan = connect_in(&lab.endpoint_ns("c1"), SocketAddrV4::new(lab.lan_ip, 9000));
    let mut to_c2 = connect_in(&lab.endpoint_ns("c1"), SocketAddrV4::new(c2, 9001));
    for s in [&mut to_lan, &mut to_c2] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        roundtrip(s, b"before");
    }

    // 1. The netpath process dies hard.
    let daemon = start_daemon(&lab);
    std::thread::sleep(Duration::from_millis(1500));
    drop(daemon); // SIGKILL
    roundtrip(&mut to_lan, b"after kill -9");
    roundtrip(&mut to_c2, b"after kill -9");

    // 2. An upgrade: the pinned version no longer matches, so the next command loads the
    // programs again against the same pinned maps and swaps every attachment to them.
    let version =
        std::path::PathBuf::from(format!("/run/netpath-{}/datapath/version", lab.instance));
    std::fs::remove_file(&version).unwrap();
    lab.netpath_ok(&["endpoint", "create", "c3"]);
    assert!(version.exists());
    roundtrip(&mut to_lan, b"after reload");
    roundtrip(&mut to_c2, b"after reload");

    // 3. netpath comes back and adopts what is pinned.
    let _daemon = start_daemon(&lab);
    std::thread::sleep(Duration::from_millis(1500));
    roundtrip(&mut to_lan, b"after restart");
    roundtrip(&mut to_c2, b"after restart");
    // Still the same two connections: no reconnect happened.
    assert_eq!(lan_server.peers().len(), 1, "{:?}", lan_server.peers());
    assert_eq!(local_server.peers().len(), 1);
    assert!(lab.netpath_ok(&["status"]).contains("np_from_ep"));
}

/// Pins, in place of the instance's map `name`, a map of the same type and keys whose values
/// are cut to `value_size` bytes, holding the same entries: what a netpath with that shorter
/// layout would have left. Returns the map's current layout.
fn pin_older_layout(lab: &Lab, name: &str, value_size: u32) -> migrate::Layout {
    let pin = lab.pin_dir().join(name);
    let current = migrate::pinned_layout(&pin).unwrap();
    let max_entries = aya::maps::MapInfo::from_pin(&pin).unwrap().max_entries();
    let older =
        syscall::map_create(current.map_type, current.key_size, value_size, max_entries).unwrap();
    let live = syscall::obj_get(&pin).unwrap();
    let flags = migrate::UpdateFlags::Any;
    migrate::copy_entries(
        &live,
        &older,
        current.key_size,
        max_entries,
        current.value_size,
        value_size,
        flags,
    )
    .unwrap();
    let staged = lab.pin_dir().join(format!("{name}@staged"));
    syscall::obj_pin(&older, &staged).unwrap();
    std::fs::rename(&staged, &pin).unwrap();
    current
}

/// Pins older than this directory's own files, left by the migration: `NAME@old`.
fn leftover_old_pins(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.pin_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("@old"))
        .collect()
}

#[test]
fn an_upgrade_carries_shorter_flow_entries_over_and_connections_go_on() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "c1"]);
    lab.netpath_ok(&["publish", "8080:c1:80"]);
    let c1 = lab.ip_of("c1");
    // A masqueraded connection (c1 -> LAN) and one to a published port (LAN -> c1): their
    // state is in NP_CT and NP_NAT.
    let lan_server = TcpEchoServer::start(&lab.lan.path, SocketAddrV4::new(lab.lan_ip, 9000));
    let ep_server = TcpEchoServer::start(&lab.endpoint_ns("c1"), SocketAddrV4::new(c1, 80));
    let mut to_lan = connect_in(&lab.endpoint_ns("c1"), SocketAddrV4::new(lab.lan_ip, 9000));
    let mut published = connect_in(&lab.lan.path, SocketAddrV4::new(lab.host_uplink_ip, 8080));
    for s in [&mut to_lan, &mut published] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        roundtrip(s, b"before");
    }

    // An older netpath's flow maps: the layout before the cached route and MACs (48 bytes).
    let ct = pin_older_layout(&lab, map_name::CONNTRACK, 48);
    let nat = pin_older_layout(&lab, map_name::NAT, 48);
    let version =
        std::path::PathBuf::from(format!("/run/netpath-{}/datapath/version", lab.instance));
    std::fs::remove_file(&version).unwrap();

    let out = netpath_env(&lab, &[], &["endpoint", "create", "c2"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("carried maps NP_CT, NP_NAT over"),
        "{stderr}"
    );
    for (name, layout) in [(map_name::CONNTRACK, ct), (map_name::NAT, nat)] {
        let now = migrate::pinned_layout(&lab.pin_dir().join(name)).unwrap();
        assert_eq!(now, layout, "{name} is back in this version's layout");
    }
    assert_eq!(leftover_old_pins(&lab), Vec::<String>::new());
    // The same connections carry on through the carried-over entries.
    roundtrip(&mut to_lan, b"after the upgrade");
    roundtrip(&mut published, b"after the upgrade");
    assert_eq!(lan_server.peers().len(), 1, "{:?}", lan_server.peers());
    assert_eq!(ep_server.peers().len(), 1, "{:?}", ep_server.peers());
}

#[test]
fn a_pinned_map_that_cannot_be_carried_over_is_refused_and_left_as_it_was() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "c1"]);
    // NP_PORTS with other keys than this version's: nothing to carry it over with.
    let pin = lab.pin_dir().join(map_name::PORTS);
    let kept = lab.pin_dir().join("NP_PORTS@kept");
    std::fs::rename(&pin, &kept).unwrap();
    let odd = syscall::map_create(migrate::BPF_MAP_TYPE_HASH, 8, 24, 16).unwrap();
    syscall::obj_pin(&odd, &pin).unwrap();
    let version =
        std::path::PathBuf::from(format!("/run/netpath-{}/datapath/version", lab.instance));
    std::fs::remove_file(&version).unwrap();

    let err = lab.netpath_err(&["endpoint", "create", "c2"]);
    assert!(
        err.contains("map NP_PORTS was made by another netpath version"),
        "{err}"
    );
    assert!(err.contains("netpath purge"), "{err}");
    // Nothing moved: the odd map is still pinned, no other map was set aside, and the
    // endpoint was not made.
    let odd_layout = migrate::pinned_layout(&pin).unwrap();
    assert_eq!((odd_layout.key_size, odd_layout.value_size), (8, 24));
    assert_eq!(leftover_old_pins(&lab), Vec::<String>::new());
    assert!(!lab.endpoint_ns("c2").exists());

    // With the instance's own map back, the same command goes through.
    std::fs::remove_file(&pin).unwrap();
    std::fs::rename(&kept, &pin).unwrap();
    lab.netpath_ok(&["endpoint", "create", "c2"]);
}

#[test]
fn a_crash_at_any_step_is_converged_by_the_next_run() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "keep"]);
    let devices_before = netpath_devices(&lab);
    for (i, point) in [
        "endpoint-reserved",
        "endpoint-veth-created",
        "endpoint-peer-moved",
        "endpoint-before-ready",
    ]
    .into_iter()
    .enumerate()
    {
        let out = netpath_env(
            &lab,
            &[("NETPATH_CRASH_AT", point)],
            &["endpoint", "create", "victim"],
        );
        assert!(
            !out.status.success(),
            "{point}: the crash hook did not fire"
        );
        // The next changing command finds the interrupted change and reconciles first (here an
        // unrelated one, every other round; `netpath reconcile` in the others); then the name
        // and the address are free again.
        if i % 2 == 0 {
            lab.netpath_ok(&["reconcile"]);
        } else {
            let net = format!("tmp{i}");
            lab.netpath_ok(&[
                "network",
                "create",
                &net,
                "--subnet",
                &format!("10.241.{i}.0/24"),
            ]);
            lab.netpath_ok(&["network", "rm", &net]);
        }
        assert!(
            !lab.netpath_ok(&["endpoint", "ls"]).contains("victim"),
            "{point}"
        );
        assert!(
            !lab.endpoint_ns("victim").exists(),
            "{point}: namespace left behind"
        );
        assert_eq!(
            netpath_devices(&lab),
            devices_before,
            "{point}: devices left behind"
        );
        lab.netpath_ok(&["endpoint", "create", "victim"]);
        assert_eq!(
            lab.ip_of("victim"),
            Ipv4Addr::new(172, 17, 0, 3),
            "{point}: address lost or doubled"
        );
        assert!(
            ping(&lab.endpoint_ns("victim"), "172.17.0.2"),
            "{point}: rebuilt endpoint is broken"
        );
        lab.netpath_ok(&["endpoint", "rm", "victim"]);
    }
    let out = netpath_env(
        &lab,
        &[("NETPATH_CRASH_AT", "network-bridge-created")],
        &["network", "create", "half"],
    );
    assert!(!out.status.success());
    lab.netpath_ok(&["reconcile"]);
    assert!(!lab.netpath_ok(&["network", "ls"]).contains("half"));
    assert_eq!(
        netpath_devices(&lab),
        devices_before,
        "orphan bridge left behind"
    );
    lab.netpath_ok(&["network", "create", "half"]);
}

#[test]
fn two_instances_serve_two_hosts_side_by_side() {
    let one = Lab::new();
    let two = Lab::new();
    for lab in [&one, &two] {
        lab.netpath_ok(&["endpoint", "create", "web"]);
    }
    // Same endpoint name, same default subnet, different hosts: no clash.
    assert_ne!(one.endpoint_ns("web"), two.endpoint_ns("web"));
    assert!(ping(&one.endpoint_ns("web"), &one.lan_ip.to_string()));
    assert!(ping(&two.endpoint_ns("web"), &two.lan_ip.to_string()));
    let server = TcpEchoServer::start(&two.lan.path, SocketAddrV4::new(two.lan_ip, 7100));
    tcp_echo(
        &two.endpoint_ns("web"),
        SocketAddrV4::new(two.lan_ip, 7100),
        b"two",
    )
    .unwrap();
    assert!(
        server
            .peers()
            .iter()
            .all(|p| p.ip() == std::net::IpAddr::V4(two.host_uplink_ip))
    );
    // An instance refuses to serve a namespace other than its own.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", two.host.path.display()))
        .arg(netpath_bin())
        .args([
            "--instance",
            &one.instance,
            "endpoint",
            "create",
            "intruder",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another network namespace"), "{err}");
    // It says where the instance's namespace is and how to run there.
    assert!(
        err.contains(&format!("nsenter --net={}", one.host.path.display())),
        "{err}"
    );
}

#[test]
fn purge_clears_an_instance_whose_host_namespace_is_gone() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "web"]);
    lab.netpath_ok(&["publish", "18080:web:80"]);
    let endpoint_ns = lab.endpoint_ns("web");
    assert!(endpoint_ns.exists());
    // The links holding netpath's programs on the root cgroup (Linux >= 5.14 only).
    let cgroup_links: Vec<String> = std::fs::read_dir(lab.pin_dir().join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("@cgroup"))
        .map(|pin| {
            let out = Command::new("bpftool")
                .args(["link", "show", "pinned"])
                .arg(&pin)
                .arg("--json")
                .output()
                .unwrap();
            let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            shown["id"].as_u64().expect("link id").to_string()
        })
        .collect();
    let elsewhere = Netns::new(&unique_name("pg"));
    let purge_from_elsewhere = || {
        Command::new("nsenter")
            .arg(format!("--net={}", elsewhere.path.display()))
            .arg(netpath_bin())
            .args(["--instance", &lab.instance, "purge", "--force"])
            .output()
            .unwrap()
    };
    // While the host namespace exists, a purge from elsewhere is refused, pointing there.
    let out = purge_from_elsewhere();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("nsenter --net={}", lab.host.path.display())),
        "{err}"
    );
    assert!(lab.pin_dir().exists() && endpoint_ns.exists());

    // The host namespace goes away (its bridge, veths and attachments with it).
    let del = Command::new("ip")
        .args(["netns", "del", &lab.host.name])
        .output()
        .unwrap();
    assert!(del.status.success());
    let err = refusal_in(&elsewhere, &lab.instance);
    assert!(err.contains("which no longer exists"), "{err}");
    assert!(err.contains("purge --force"), "{err}");

    let out = purge_from_elsewhere();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("removed endpoint web"), "{said}");
    assert!(!endpoint_ns.exists(), "endpoint namespace left");
    assert!(!lab.pin_dir().exists(), "pins left");
    for dir in ["/var/lib/netpath", "/run/netpath"] {
        let dir = format!("{dir}-{}", lab.instance);
        assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
    }
    for id in cgroup_links {
        let out = Command::new("bpftool")
            .args(["link", "show", "id", &id])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "cgroup link {id} still exists after the purge"
        );
    }
}

/// What another command of `instance` says when run in `ns`, which it does not serve.
fn refusal_in(ns: &Netns, instance: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path.display()))
        .arg(netpath_bin())
        .args(["--instance", instance, "endpoint", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn network_modes_none_host_and_container() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "loner", "--network", "none"]);
    let links = ns_links(&lab.endpoint_ns("loner"));
    assert_eq!(
        links,
        vec!["lo".to_string()],
        "none mode must have loopback only"
    );

    lab.netpath_ok(&["endpoint", "create", "hosty", "--network", "host"]);
    assert!(!lab.endpoint_ns("hosty").exists());
    assert!(lab.netpath_ok(&["endpoint", "ls"]).contains("(host)"));

    lab.netpath_ok(&["endpoint", "create", "app"]);
    lab.netpath_ok(&[
        "endpoint",
        "create",
        "sidecar",
        "--network",
        "container:app",
    ]);
    let app: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["endpoint", "inspect", "app"])).unwrap();
    let side: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["endpoint", "inspect", "sidecar"])).unwrap();
    assert_eq!(app["netns"], side["netns"]);
    let err = lab.netpath_err(&["endpoint", "rm", "app"]);
    assert!(err.contains("sidecar"), "{err}");
    lab.netpath_ok(&["endpoint", "rm", "sidecar"]);
    assert!(
        lab.endpoint_ns("app").exists(),
        "removing a sharer removed the owner's namespace"
    );
    lab.netpath_ok(&["endpoint", "rm", "app", "loner", "hosty"]);
}

#[test]
fn bad_input_is_refused_with_nothing_changed() {
    let lab = Lab::new();
    lab.netpath_ok(&["network", "create", "taken", "--subnet", "10.220.0.0/24"]);
    lab.netpath_ok(&["endpoint", "create", "user", "--network", "taken"]);
    let snapshot = |lab: &Lab| {
        (
            lab.netpath_ok(&["network", "ls"]),
            lab.netpath_ok(&["endpoint", "ls"]),
            netpath_devices(lab),
        )
    };
    let before = snapshot(&lab);
    let cases: &[(&[&str], &str)] = &[
        (&["network", "create", "taken"], "already exists"),
        (
            &["network", "create", "over", "--subnet", "10.220.0.128/25"],
            "taken",
        ),
        (
            &[
                "network",
                "create",
                "gw",
                "--subnet",
                "10.221.0.0/24",
                "--gateway",
                "10.9.9.1",
            ],
            "10.9.9.1",
        ),
        (
            &["network", "create", "wide", "--subnet", "10.222.0.0/33"],
            "33",
        ),
        (
            &["network", "create", "hostbits", "--subnet", "10.223.0.5/24"],
            "10.223.0.0/24",
        ),
        (&["network", "create", "host"], "mode"),
        (&["network", "rm", "taken"], "user"),
        (&["network", "rm", "bridge"], "default network"),
        (&["network", "rm", "nosuch"], "not found"),
        (&["endpoint", "create", "user"], "already exists"),
        (
            &["endpoint", "create", "x", "--network", "nosuch"],
            "not found",
        ),
        (
            &[
                "endpoint",
                "create",
                "x",
                "--network",
                "taken",
                "--ip",
                "10.220.1.5",
            ],
            "10.220.1.5",
        ),
        (
            &[
                "endpoint",
                "create",
                "x",
                "--network",
                "taken",
                "--ip",
                "10.220.0.1",
            ],
            "gateway",
        ),
        (
            &[
                "endpoint",
                "create",
                "x",
                "--network",
                "taken",
                "--ip",
                "nonsense",
            ],
            "not an IPv4 address",
        ),
        (
            &[
                "endpoint",
                "create",
                "x",
                "--network",
                "taken",
                "--mac",
                "01:00:5e:00:00:01",
            ],
            "multicast",
        ),
        (
            &[
                "endpoint",
                "create",
                "x",
                "--network",
                "taken",
                "--mac",
                "zz:zz",
            ],
            "MAC",
        ),
        (&["endpoint", "create", "bad/name"], "invalid endpoint name"),
        (&["endpoint", "rm", "nosuch"], "not found"),
        (
            &["attach", "nobr0", "nosuchns", "10.1.1.1/24"],
            "not a network namespace",
        ),
    ];
    for (args, needle) in cases {
        let err = lab.netpath_err(args);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: expected {needle:?} in: {err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: error is not one line: {err}"
        );
        assert_eq!(snapshot(&lab), before, "{args:?} changed something");
        assert!(!lab.endpoint_ns("x").exists(), "{args:?} left a namespace");
    }
    // Bad instance names and non-root callers are refused before anything is read.
    let err = Command::new(netpath_bin())
        .args(["--instance", "Bad_Name", "status"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("invalid instance name"));
    let nonroot = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netpath_bin())
        .args(["--instance", &lab.instance, "status"])
        .output()
        .unwrap();
    assert!(!nonroot.status.success());
    assert!(
        String::from_utf8_lossy(&nonroot.stderr).contains("root"),
        "{}",
        String::from_utf8_lossy(&nonroot.stderr)
    );
}

#[test]
fn ip_netns_exec_is_refused_with_a_pointer_to_nsenter() {
    let lab = Lab::new();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.host.name])
        .arg(netpath_bin())
        .args(["--instance", &lab.instance, "endpoint", "create", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nsenter"), "{err}");
    assert!(!lab.endpoint_ns("x").exists());
}

#[test]
fn host_config_file_shapes_the_default_network() {
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(format!("netpath-cfg-{}", lab.instance));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = DirGuard(dir.clone());
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"bip": "10.230.0.1/24", "fixed-cidr": "10.230.0.128/25", "mtu": 1400, "dns": ["10.230.0.53"], "icc": true}"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    lab.netpath_ok(&["--config", cfg, "endpoint", "create", "cfg"]);
    let ip = lab.ip_of("cfg");
    assert!(
        ip.octets()[..3] == [10, 230, 0] && ip.octets()[3] >= 128,
        "{ip} not from fixed-cidr"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["network", "inspect", "bridge"])).unwrap();
    assert_eq!(inspect[0]["gateway"], "10.230.0.1");
    assert_eq!(inspect[0]["mtu"], 1400);
    let link = ns_output(
        &lab.endpoint_ns("cfg"),
        &["ip", "-o", "link", "show", "eth0"],
    );
    assert!(link.contains("mtu 1400"), "{link}");
    let resolv = std::fs::read_to_string(lab.resolv_conf("cfg")).unwrap();
    assert!(resolv.contains("nameserver 10.230.0.53"), "{resolv}");
    // A config with an unknown key is refused by name.
    std::fs::write(
        dir.join("bad.json"),
        r#"{"bip": "10.231.0.1/24", "no-such-key": 1}"#,
    )
    .unwrap();
    let err = lab.netpath_err(&[
        "--config",
        dir.join("bad.json").to_str().unwrap(),
        "endpoint",
        "create",
        "x",
    ]);
    assert!(err.contains("no-such-key"), "{err}");
}

struct DirGuard(std::path::PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pipework_attach_puts_namespaces_on_a_host_bridge() {
    let lab = Lab::new();
    lab.host
        .run_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    lab.host.run_ok(&["ip", "link", "set", "br0", "up"]);
    let n1 = Netns::new(&unique_name("p"));
    let n2 = Netns::new(&unique_name("p"));
    lab.netpath_ok(&["attach", "br0", &n1.name, "192.168.77.10/24"]);
    lab.netpath_ok(&[
        "attach",
        "br0",
        n2.path.to_str().unwrap(),
        "192.168.77.11/24@192.168.77.1",
    ]);
    assert!(ping(&n1.path, "192.168.77.11"));
    let routes = ns_output(&n2.path, &["ip", "route"]);
    assert!(
        routes.contains("default via 192.168.77.1 dev eth1"),
        "{routes}"
    );
    let err = lab.netpath_err(&["attach", "br0", &n1.name, "192.168.77.12/24"]);
    assert!(err.contains("already attached"), "{err}");
    lab.netpath_ok(&["detach", "br0", &n1.name]);
    assert!(!ping(&n2.path, "192.168.77.10"));
}

#[test]
fn netlink_clsact_attach_mode_works_too() {
    let lab = Lab::new();
    let env = [("NETPATH_ATTACH", "netlink")];
    for name in ["n1", "n2"] {
        let out = netpath_env(&lab, &env, &["endpoint", "create", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = String::from_utf8_lossy(&netpath_env(&lab, &env, &["status"]).stdout).into_owned();
    assert!(status.contains("netlink clsact"), "{status}");
    assert!(ping(&lab.endpoint_ns("n1"), &lab.ip_of("n2").to_string()));
    assert!(ping(&lab.endpoint_ns("n1"), &lab.lan_ip.to_string()));
    let json: serde_json::Value =
        serde_json::from_str(&lab.netpath_ok(&["endpoint", "inspect", "n1"])).unwrap();
    let veth = json["attachments"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_string();
    let filters = lab
        .host
        .run_ok(&["tc", "filter", "show", "dev", &veth, "ingress"]);
    assert!(String::from_utf8_lossy(&filters.stdout).contains("np_from_ep"));
}

#[test]
fn a_recreated_uplink_gets_its_program_back() {
    let lab = Lab::new();
    lab.netpath_ok(&["endpoint", "create", "out"]);
    assert!(ping(&lab.endpoint_ns("out"), &lab.lan_ip.to_string()));
    // The uplink disappears and comes back under the same name: a new device, whose ingress
    // has no program although the old link's pin is still there.
    let (host_ip, lan_ip) = (
        format!("{}/24", lab.host_uplink_ip),
        format!("{}/24", lab.lan_ip),
    );
    lab.host.run_ok(&["ip", "link", "del", "up0"]);
    lab.host.run_ok(&[
        "ip",
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "lan0",
        "netns",
        &lab.lan.name,
    ]);
    lab.host
        .run_ok(&["ip", "addr", "add", &host_ip, "dev", "up0"]);
    lab.host.run_ok(&["ip", "link", "set", "up0", "up"]);
    lab.host.run_ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &lab.lan_ip.to_string(),
    ]);
    lab.lan
        .run_ok(&["ip", "addr", "add", &lan_ip, "dev", "lan0"]);
    lab.lan.run_ok(&["ip", "link", "set", "lan0", "up"]);
    let notes = lab.netpath_ok(&["reconcile"]);
    let before = lab.stat("snat_reply_in");
    assert!(
        ping(&lab.endpoint_ns("out"), &lab.lan_ip.to_string()),
        "masquerade broken after the uplink came back ({notes})"
    );
    assert!(
        lab.stat("snat_reply_in") > before,
        "replies did not take the eBPF path"
    );
}
