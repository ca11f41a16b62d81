//! Kernel-load tests (needs root): every eBPF program of netpath's object loads and passes the
//! verifier of the running kernel, and the datapath loads, pins and attaches the way netpath
//! does it (`Datapath::open`, in the attach mode this kernel gets). They send no traffic, so
//! they are the check the kernel matrix (`cargo xtask test --kernel V`) runs on every kernel
//! even where end-to-end traffic is not exercised; on this machine they run with the rest.
//!
//! What the code promises, and so what is asserted: the TC programs (`program_name::TC`) load
//! on every kernel netpath supports (>= 5.10); the cgroup `sock_addr` programs
//! (`program_name::CGROUP`) load on Linux >= 5.14, and below that netpath may run without them
//! (host processes then cannot reach published ports through host addresses), which these
//! tests print instead of failing.
//!
//! Everything happens in a private network namespace (a thread that `unshare`s one) and in a
//! bpffs directory of this test alone, removed at the end.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{EbpfLoader, programs::Program};
use netpath::{
    EBPF_OBJECT,
    datapath::{AttachMode, Datapath, error_chain},
    sys,
};
use netpath_common::program_name;
use netpath_tests::{bpffs_pin_dir, ifindex, ip, unique_name};

/// The kernel from which the cgroup programs must load (README: host-local published ports).
const CGROUP_PROGRAMS_FROM: (u32, u32) = (5, 14);

/// Runs `f` on a thread in a fresh network namespace of its own.
fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall; it only changes this thread's network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {} (run as root)",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The last `n` lines of a (verifier) message, so a rejection stays readable.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = if skip > 0 {
        format!("[… {skip} earlier lines]\n")
    } else {
        String::new()
    };
    out.push_str(&lines[skip..].join("\n"));
    out
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cgroup_programs_promised() -> bool {
    sys::kernel_version() >= CGROUP_PROGRAMS_FROM
}

#[test]
fn every_program_of_the_object_loads_and_verifies_on_this_kernel() {
    in_private_netns(|| {
        // Fresh, unpinned maps: this checks the programs, not any pinned state.
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).unwrap_or_else(|e| {
            panic!(
                "kernel {}: the object does not load: {}",
                kernel(),
                error_chain(&e)
            )
        });
        let mut names: Vec<String> = Vec::new();
        let mut refused: Vec<(String, String)> = Vec::new();
        for (name, program) in ebpf.programs_mut() {
            names.push(name.to_string());
            let result = match program {
                Program::SchedClassifier(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                other => panic!(
                    "program {name} is a {:?}, which this test does not know how to load: add it here",
                    other.prog_type()
                ),
            };
            match result {
                Ok(()) => println!("kernel {}: {name} loaded and verified", kernel()),
                Err(e) => refused.push((name.to_string(), error_chain(&e))),
            }
        }
        names.sort();
        let mut expected: Vec<String> = program_name::ALL.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(
            names, expected,
            "the object's programs differ from program_name::ALL"
        );
        let (tolerated, fatal): (Vec<_>, Vec<_>) = refused.into_iter().partition(|(name, _)| {
            program_name::CGROUP.contains(&name.as_str()) && !cgroup_programs_promised()
        });
        for (name, why) in &tolerated {
            println!(
                "kernel {}: {name} refused (allowed below Linux {}.{}: no host-local published ports): {}",
                kernel(),
                CGROUP_PROGRAMS_FROM.0,
                CGROUP_PROGRAMS_FROM.1,
                tail(why, 15)
            );
        }
        assert!(
            fatal.is_empty(),
            "kernel {}: the verifier refused {} program(s):\n{}",
            kernel(),
            fatal.len(),
            fatal
                .iter()
                .map(|(n, why)| format!("--- {n}:\n{}", tail(why, 60)))
                .collect::<Vec<_>>()
                .join("\n")
        );
    });
}

/// Removes the test's pins and records however the test ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn datapath_loads_pins_and_attaches_in_this_kernels_attach_mode() {
    let instance = unique_name("kl");
    let pin_dir = bpffs_pin_dir(&instance);
    let meta_dir = PathBuf::from(format!("/run/netpath-{instance}/datapath"));
    let _cleanup = Cleanup(vec![
        pin_dir.clone(),
        meta_dir.parent().map(Path::to_path_buf).unwrap_or_default(),
    ]);
    in_private_netns(|| {
        let dp = Datapath::open(&pin_dir, &meta_dir).unwrap_or_else(|e| {
            panic!(
                "kernel {}: Datapath::open failed: {}",
                kernel(),
                error_chain(&e)
            )
        });
        let expected_mode = match std::env::var("NETPATH_ATTACH").as_deref() {
            Ok("netlink") => AttachMode::Netlink,
            Ok("tcx") => AttachMode::Tcx,
            _ if sys::kernel_version() >= (6, 6) => AttachMode::Tcx,
            _ => AttachMode::Netlink,
        };
        assert_eq!(dp.mode(), expected_mode, "attach mode on {}", kernel());
        println!("kernel {}: attach mode {}", kernel(), dp.mode().as_str());

        let ids = dp.program_ids();
        for name in program_name::TC {
            let id = ids.iter().find(|(n, _)| *n == name).and_then(|(_, id)| *id);
            assert!(id.is_some(), "kernel {}: {name} is not pinned", kernel());
        }
        for name in program_name::CGROUP {
            let pinned = dp.pin_dir().join(format!("prog_{name}")).exists();
            if cgroup_programs_promised() {
                assert!(pinned, "kernel {}: {name} is not pinned", kernel());
            } else if !pinned {
                println!(
                    "kernel {}: {name} not loaded (allowed below 5.14)",
                    kernel()
                );
            }
        }

        // One veth pair in this namespace stands for an endpoint's host side and an uplink.
        ip(&[
            "link", "add", "klep0", "type", "veth", "peer", "name", "klup0",
        ]);
        ip(&["link", "set", "klep0", "up"]);
        ip(&["link", "set", "klup0", "up"]);
        for (dev, program) in [
            ("klep0", program_name::FROM_ENDPOINT),
            ("klup0", program_name::FROM_UPLINK),
        ] {
            dp.attach_ingress(dev, program).unwrap_or_else(|e| {
                panic!(
                    "kernel {}: attaching {program} to {dev} ({}): {}",
                    kernel(),
                    dp.mode().as_str(),
                    error_chain(&e)
                )
            });
            assert!(
                dp.is_attached(dev, ifindex(dev), program),
                "kernel {}: {program} not attached to {dev} after attach_ingress",
                kernel()
            );
            assert_eq!(dp.attached_interfaces(program).unwrap(), [dev]);
            dp.detach_ingress(dev, program).unwrap();
            assert!(!dp.is_attached(dev, ifindex(dev), program));
        }

        // The cgroup programs act only on sockets of the namespace whose cookie is in
        // NP_CONFIG, still 0 here, so attaching them to the cgroup root changes nothing else.
        if dp
            .pin_dir()
            .join(format!("prog_{}", program_name::SOCK_CONNECT4))
            .exists()
        {
            dp.attach_cgroup_programs().unwrap_or_else(|e| {
                panic!(
                    "kernel {}: attaching the cgroup programs: {}",
                    kernel(),
                    error_chain(&e)
                )
            });
            for name in program_name::CGROUP {
                if dp.pin_dir().join(format!("prog_{name}")).exists() {
                    assert_eq!(
                        dp.attached_interfaces(name).unwrap(),
                        ["cgroup"],
                        "kernel {}: {name} has no pinned cgroup link",
                        kernel()
                    );
                }
            }
            dp.detach_all_cgroup().unwrap();
        }
    });
}
