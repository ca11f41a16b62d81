//! Owns the commands: each submodule turns one CLI verb into a plan, applies it, and leaves
//! store and kernel in step.
pub mod bridge_attach;
pub mod endpoint;
pub mod inspect;
pub mod network;
pub mod publish;
pub mod reconcile;
