//! wk's integration tests: one binary, a module per area, each driving the real `wk server`.

mod agent;
mod autoscaling;
mod controllers;
mod examples;
mod guests;
mod harness;
mod images;
mod ingress;
mod jobs;
mod kube_client;
mod kubectl;
mod lan;
mod nodes;
mod quota;
mod registry;
mod server;
mod services;
mod shim;
mod storage;
mod store;
mod wk_cli;
