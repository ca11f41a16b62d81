//! netpath: Docker-style container networking on an eBPF datapath. The library holds the whole
//! control plane; `main.rs` is only the command-line edge.
pub mod addr;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod datapath;
pub mod instance;
pub mod ipam;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod ports;
pub mod store;
pub mod sys;

/// The eBPF object (all programs and map definitions), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));
