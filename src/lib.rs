//! wk: a small orchestrator that runs WebAssembly pods behind a Kubernetes-compatible API.
//!
//! One binary is the control plane (`wk server`), the node agent and the client (`wk get`,
//! `wk apply`, ...). The same crate is a library, so a gateway can embed a cluster:
//! [`server::Server::start`] runs the API server in-process.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod controllers;
pub mod dns;
pub mod ingress;
pub mod net;
pub mod oci;
pub mod scheduler;
pub mod server;
pub mod store;
#[cfg(test)]
mod testkit;

/// The node architecture in Kubernetes' spelling (`amd64`, `arm64`).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
