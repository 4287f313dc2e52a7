//! wk's container shim: runs ordinary Linux OCI images with runc, inside a pod's network
//! namespace and with its volumes, next to its Wasm containers.
//!
//! [`spec`] turns an image's config and a container's settings into the OCI runtime spec
//! (`config.json`) that runc runs; [`rootfs`] gives each container a writable root over its
//! image's read-only one; [`supervise`] is the `wk-shim` process that runs one container and
//! outlives the agent; [`log`] writes container logs in the kubelet's format, for Wasm and
//! Linux containers alike.

pub mod log;
pub mod rootfs;
pub mod spec;
pub mod supervise;
