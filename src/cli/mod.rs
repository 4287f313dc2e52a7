//! The `wk` command line: one file per verb, each with an `execute()`.

mod agent;
mod annotate;
mod api_resources;
mod apply;
mod autoscale;
mod bench;
mod completion;
mod cordon;
mod create;
mod debug;
mod delete;
mod describe;
mod edit;
mod get;
mod image;
mod jsonpath;
mod label;
mod logs;
mod manifest;
mod output;
mod registry;
mod rollout;
mod scale;
mod server;
mod target;
mod top;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::client::{self, Client};

/// wk: WebAssembly pods behind a Kubernetes-compatible API.
#[derive(Debug, Parser)]
#[command(name = "wk", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: OuterGlobal,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane, with a built-in node agent.
    Server(server::Args),
    /// Run a node agent that joins a server.
    Agent(agent::Args),
    /// Manage the images on this node.
    Image(image::Args),
    /// Publish a .wasm file to an OCI registry as an artifact.
    Push(registry::PushArgs),
    /// Fetch and verify an image from a registry, and show its digest and kind.
    Pull(registry::PullArgs),
    /// Log in to (or out of) an OCI registry for `wk push` and `wk pull`.
    Registry(registry::RegistryArgs),
    /// Internal tools for tests and benchmarks.
    #[command(hide = true)]
    Debug(debug::Args),
    /// Run a benchmark (figures for BENCHMARKS.md).
    Bench(bench::Args),
    /// Apply a configuration to resources by file name or stdin.
    Apply(Verb<apply::Args>),
    /// Display one or many resources.
    Get(Verb<get::Args>),
    /// Display resource (CPU/memory) usage of nodes or pods.
    Top(Verb<top::Args>),
    /// Print the logs for a container in a pod.
    Logs(Verb<logs::Args>),
    /// Show details of a specific resource.
    Describe(Verb<describe::Args>),
    /// Create resources from a file or from stdin, or from a generator.
    Create(Verb<create::Args>),
    /// Run an image as a Deployment, with a Service in front of it when it serves a port.
    Run(Verb<create::RunArgs>),
    /// Delete resources by file names, stdin, resources and names, or by resources and label selector.
    Delete(Verb<delete::Args>),
    /// Edit a resource on the server with $KUBE_EDITOR or $EDITOR.
    Edit(Verb<edit::Args>),
    /// Set a new size for a deployment, replica set or stateful set.
    Scale(Verb<scale::Args>),
    /// Manage the rollout of a deployment.
    Rollout(Verb<rollout::Args>),
    /// Auto-scale a deployment, replica set or stateful set on its pods' CPU.
    Autoscale(Verb<autoscale::Args>),
    /// Update the labels on a resource.
    Label(Verb<label::Args>),
    /// Update the annotations on a resource.
    Annotate(Verb<annotate::Args>),
    /// Mark nodes as unschedulable.
    Cordon(Verb<cordon::Args>),
    /// Mark nodes as schedulable.
    Uncordon(Verb<cordon::Args>),
    /// Drain a node in preparation for maintenance: cordon it, then evict its pods.
    Drain(Verb<cordon::DrainArgs>),
    /// Print the client and server version information.
    Version(Verb<version::Args>),
    /// Print the supported API resources on the server.
    ApiResources(Verb<api_resources::Args>),
    /// Output shell completion code for the specified shell (bash, zsh, fish, elvish or powershell).
    Completion(completion::Args),
}

/// A client verb's own flags plus the connection flags every verb takes.
#[derive(Debug, clap::Args)]
struct Verb<A: clap::Args> {
    #[command(flatten)]
    args: A,
    #[command(flatten)]
    global: Global,
}

/// The flags that pick the cluster and namespace, accepted anywhere after the verb.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Global {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, env = "WK_KUBECONFIG", value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// If present, the namespace scope for this CLI request.
    #[arg(short = 'n', long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
}

/// The same flags before the verb (`wk -n prod get pods`), as kubectl accepts them.
#[derive(Debug, Clone, Default, clap::Args)]
struct OuterGlobal {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// If present, the namespace scope for this CLI request.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
}

impl Global {
    /// The flags given after the verb win over those given before it.
    fn or(self, outer: &OuterGlobal) -> Self {
        Self {
            kubeconfig: self.kubeconfig.or_else(|| outer.kubeconfig.clone()),
            context: self.context.or_else(|| outer.context.clone()),
            namespace: self.namespace.or_else(|| outer.namespace.clone()),
        }
    }

    /// Connects to the cluster the kubeconfig names.
    ///
    /// # Errors
    /// When no kubeconfig is found or it cannot be used.
    pub fn connect(&self) -> anyhow::Result<Session> {
        let path = client::find_kubeconfig(self.kubeconfig.clone())?;
        let client = Client::from_kubeconfig(&path, self.context.as_deref())?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.namespace.clone());
        Ok(Session {
            client,
            namespace,
            explicit_namespace: self.namespace.is_some(),
        })
    }
}

/// A connected client and the namespace a command works in.
pub struct Session {
    /// The API client.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// Whether `-n` was given.
    pub explicit_namespace: bool,
}

/// An error that has already been printed; the command only needs to exit 1.
#[derive(Debug, thiserror::Error)]
#[error("the command failed")]
pub struct Reported;

/// Parses the command line and runs it; errors print as kubectl prints them.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outer = cli.global;
    let is_client = !matches!(
        cli.command,
        Command::Server(_)
            | Command::Agent(_)
            | Command::Image(_)
            | Command::Push(_)
            | Command::Pull(_)
            | Command::Registry(_)
            | Command::Debug(_)
            | Command::Bench(_)
    );
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::execute(args).await,
            Command::Agent(args) => agent::execute(args).await,
            Command::Image(args) => image::execute(args),
            Command::Push(args) => registry::push(args).await,
            Command::Pull(args) => registry::pull(args).await,
            Command::Registry(args) => registry::registry(args).await,
            Command::Logs(v) => logs::execute(v.args, &v.global.or(&outer)).await,
            Command::Top(v) => top::execute(v.args, &v.global.or(&outer)).await,
            Command::Debug(args) => debug::execute(args).await,
            Command::Bench(args) => bench::execute(args).await,
            Command::Apply(v) => apply::execute(v.args, &v.global.or(&outer)).await,
            Command::Get(v) => get::execute(v.args, &v.global.or(&outer)).await,
            Command::Describe(v) => describe::execute(v.args, &v.global.or(&outer)).await,
            Command::Create(v) => create::execute(v.args, &v.global.or(&outer)).await,
            Command::Run(v) => create::run(v.args, &v.global.or(&outer)).await,
            Command::Delete(v) => delete::execute(v.args, &v.global.or(&outer)).await,
            Command::Edit(v) => edit::execute(v.args, &v.global.or(&outer)).await,
            Command::Scale(v) => scale::execute(v.args, &v.global.or(&outer)).await,
            Command::Rollout(v) => rollout::execute(v.args, &v.global.or(&outer)).await,
            Command::Autoscale(v) => autoscale::execute(v.args, &v.global.or(&outer)).await,
            Command::Label(v) => label::execute(v.args, &v.global.or(&outer)).await,
            Command::Annotate(v) => annotate::execute(v.args, &v.global.or(&outer)).await,
            Command::Cordon(v) => cordon::execute(v.args, &v.global.or(&outer), true).await,
            Command::Uncordon(v) => cordon::execute(v.args, &v.global.or(&outer), false).await,
            Command::Drain(v) => cordon::drain(v.args, &v.global.or(&outer)).await,
            Command::Version(v) => version::execute(v.args, &v.global.or(&outer)).await,
            Command::ApiResources(v) => api_resources::execute(v.args, &v.global.or(&outer)).await,
            Command::Completion(args) => completion::execute(&args),
        }
    });
    if is_client {
        // A client's pooled connections and stdin readers must not hold the exit.
        runtime.shutdown_background();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error to stderr the way kubectl does.
pub fn report(e: &anyhow::Error) {
    if e.downcast_ref::<Reported>().is_some() {
        return;
    }
    match e.downcast_ref::<client::Error>() {
        Some(err @ client::Error::Status { .. }) => eprintln!("{}", status_message(err)),
        _ => eprintln!("error: {e:#}"),
    }
}

/// The text kubectl prints for a failure Status: a list of causes for `Invalid`, a login hint
/// for `Unauthorized`, else `Error from server (Reason): message`.
pub fn status_message(err: &client::Error) -> String {
    let client::Error::Status {
        code,
        reason,
        message,
        status,
    } = err
    else {
        return format!("error: {err}");
    };
    let details = &status["details"];
    let causes = details["causes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if (*code == 422 || reason == "Invalid") && !causes.is_empty() {
        let kind = details["kind"].as_str().unwrap_or_default();
        let name = details["name"].as_str().unwrap_or_default();
        let head = if kind.is_empty() && name.is_empty() {
            "The request is invalid".to_owned()
        } else {
            format!("The {kind} \"{name}\" is invalid")
        };
        let lines: Vec<String> = causes
            .iter()
            .map(|c| {
                let (field, msg) = (
                    c["field"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default(),
                );
                if field.is_empty() {
                    msg.to_owned()
                } else {
                    format!("{field}: {msg}")
                }
            })
            .collect();
        return if lines.len() == 1 {
            format!("{head}: {}", lines[0])
        } else {
            format!(
                "{head}: \n{}",
                lines
                    .iter()
                    .map(|l| format!("* {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
    }
    if reason == "Unauthorized" {
        return format!("error: You must be logged in to the server ({message})");
    }
    err.to_string()
}

/// The same Status error with `prefix` put before its message, as kubectl names the file and
/// step (`error when creating "x.yaml": ...`). Other errors pass through.
pub fn with_prefix(err: client::Error, prefix: &str) -> client::Error {
    match err {
        client::Error::Status {
            code,
            reason,
            message,
            status,
        } if reason != "Invalid" => client::Error::Status {
            code,
            reason,
            message: format!("{prefix}{message}"),
            status,
        },
        other => other,
    }
}

/// Whether a client error is a 404.
pub fn is_not_found(err: &client::Error) -> bool {
    err.code() == Some(404)
}

/// A JSON string field, or "".
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Sets up logging to stderr, filtered by `RUST_LOG` (default: info), in colour only on a
/// terminal and without `NO_COLOR`: a log file or journald gets plain text.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
