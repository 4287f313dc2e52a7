//! The controllers `wk server` runs in-process. Each is an API client like any other, and
//! level-triggered: every pass reads the current state and corrects it.

pub mod nodeipam;
pub mod replicaset;
