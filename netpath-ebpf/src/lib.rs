#![no_std]
//! The programs live in the `netpath` binary target (built for bpfel-unknown-none); this empty
//! library only lets `netpath/build.rs` depend on the crate so cargo rebuilds on changes.
