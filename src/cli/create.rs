//! `wk create`: POST the objects in files, or build one with a generator
//! (`create deployment`, `create namespace`, `create configmap`).

use anyhow::bail;
use http::Method;
use serde_json::{Value, json};

use super::apply::{field_validation, place};
use super::manifest;
use super::output::{print, println, to_json, to_yaml};
use super::target::{collection_path, for_object, object_ref, with_query};
use super::{Global, Reported, Session, report, str_at, with_prefix};

/// Flags of `wk create`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    generator: Option<Generator>,
    /// Files or directories with the objects to create; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<String>,
    /// Process the directories given with -f recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    #[command(flatten)]
    common: Common,
}

/// Flags every form of `create` takes.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// `none`, `server` (the server checks, stores nothing) or `client` (send nothing).
    #[arg(long, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client",
          value_parser = ["none", "server", "client"], global = true)]
    dry_run: String,
    /// How the server treats unknown fields: strict, warn or ignore.
    #[arg(long, value_name = "MODE", default_value = "strict", value_parser = ["strict", "warn", "ignore", "true", "false"], global = true)]
    validate: String,
    /// Print the created object instead of a message: yaml, json or name.
    #[arg(short = 'o', long, value_parser = ["yaml", "json", "name"], global = true)]
    output: Option<String>,
    /// The name of the manager that tracks field ownership.
    #[arg(long, default_value = "kubectl-create", global = true)]
    field_manager: String,
}

#[derive(Debug, clap::Subcommand)]
enum Generator {
    /// Create a deployment with the specified name.
    #[command(visible_alias = "deploy")]
    Deployment {
        /// The deployment's name.
        name: String,
        /// Image names to run (repeatable); one container each.
        #[arg(long, required = true)]
        image: Vec<String>,
        /// Number of replicas.
        #[arg(short = 'r', long, default_value_t = 1)]
        replicas: i64,
        /// The port the first container exposes.
        #[arg(long)]
        port: Option<i64>,
    },
    /// Create a namespace with the specified name.
    #[command(visible_alias = "ns")]
    Namespace {
        /// The namespace's name.
        name: String,
    },
    /// Create a config map from literal values.
    #[command(visible_alias = "cm")]
    Configmap {
        /// The config map's name.
        name: String,
        /// `key=value` (repeatable).
        #[arg(long)]
        from_literal: Vec<String>,
    },
}

/// Flags of `wk run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The name of the Deployment and its Service.
    name: String,
    /// The image to run.
    #[arg(long)]
    image: String,
    /// The port the container serves on; with it, a Service in front of the pods.
    #[arg(long)]
    port: Option<i64>,
    /// The Service's port [default: --port].
    #[arg(long)]
    service_port: Option<i64>,
    /// The Service's type.
    #[arg(long = "type", default_value = "ClusterIP", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    service_type: String,
    /// Number of replicas.
    #[arg(short = 'r', long, default_value_t = 1)]
    replicas: i64,
    /// `none`, `server` (the server checks, stores nothing) or `client` (send nothing).
    #[arg(long, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client",
          value_parser = ["none", "server", "client"])]
    dry_run: String,
    /// Print the created objects instead of messages: yaml, json or name.
    #[arg(short = 'o', long, value_parser = ["yaml", "json", "name"])]
    output: Option<String>,
}

/// Runs `wk run`: a Deployment of the image, labelled `app=NAME` as `kubectl create
/// deployment` makes it, and with `--port` a Service of the same name selecting its pods,
/// for a developer's loop in one command.
///
/// # Errors
/// When the server refuses either object; the Service is not made if the Deployment was not.
pub async fn run(args: RunArgs, global: &Global) -> anyhow::Result<()> {
    if args.service_port.is_some() && args.port.is_none() {
        bail!("--service-port needs --port: the port the container serves on");
    }
    let mut objects = vec![deployment(
        &args.name,
        std::slice::from_ref(&args.image),
        args.replicas,
        args.port,
    )];
    if let Some(port) = args.port {
        let service_port = args.service_port.unwrap_or(port);
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": args.name, "labels": {"app": args.name}},
            "spec": {"type": args.service_type, "selector": {"app": args.name},
                "ports": [{"port": service_port, "targetPort": port, "protocol": "TCP"}]}}));
    }
    let common = Common {
        dry_run: args.dry_run,
        validate: "strict".into(),
        output: args.output,
        field_manager: "wk-run".into(),
    };
    let session = global.connect()?;
    for object in objects {
        create_one(&session, &common, "", object).await?;
    }
    Ok(())
}

/// Runs `wk create`.
///
/// # Errors
/// On bad input; each object's failure is reported and the others are still created.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let objects: Vec<(String, Value)> = match args.generator {
        Some(generator) => vec![("".to_owned(), generate(generator)?)],
        None if args.files.is_empty() => bail!("must specify one of -f and -k"),
        None => manifest::read(&args.files, args.recursive)
            .await?
            .into_iter()
            .map(|m| (m.source, m.object))
            .collect(),
    };
    let session = global.connect()?;
    let mut failed = false;
    for (source, object) in objects {
        if let Err(e) = create_one(&session, &args.common, &source, object).await {
            report(&e);
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

async fn create_one(
    session: &Session,
    common: &Common,
    source: &str,
    mut object: Value,
) -> anyhow::Result<()> {
    let res = for_object(&object, if source.is_empty() { "STDIN" } else { source })?;
    let ns = place(session, res, &mut object)?;
    let name = str_at(&object, "/metadata/name").to_owned();
    let created = if common.dry_run == "client" {
        object
    } else {
        let url = with_query(
            &collection_path(res, ns.as_deref()),
            &[
                ("fieldManager", &common.field_manager),
                ("fieldValidation", field_validation(&common.validate)),
                (
                    "dryRun",
                    if common.dry_run == "server" {
                        "All"
                    } else {
                        ""
                    },
                ),
            ],
        );
        let prefix = if source.is_empty() {
            String::new()
        } else {
            format!("error when creating \"{source}\": ")
        };
        session
            .client
            .request(
                Method::POST,
                &url,
                Some("application/json"),
                Some(serde_json::to_vec(&object)?),
            )
            .await
            .map_err(|e| with_prefix(e, &prefix))?
    };
    let name = if name.is_empty() {
        str_at(&created, "/metadata/name").to_owned()
    } else {
        name
    };
    match common.output.as_deref() {
        Some("yaml") => print(&to_yaml(&created)?),
        Some("json") => print(&to_json(&created)?),
        Some(_) => println(&object_ref(res, &name)),
        None => {
            let suffix = match common.dry_run.as_str() {
                "server" => " (server dry run)",
                "client" => " (dry run)",
                _ => "",
            };
            println(&format!("{} created{suffix}", object_ref(res, &name)));
        }
    }
    Ok(())
}

fn generate(generator: Generator) -> anyhow::Result<Value> {
    Ok(match generator {
        Generator::Deployment {
            name,
            image,
            replicas,
            port,
        } => deployment(&name, &image, replicas, port),
        Generator::Namespace { name } => {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        }
        Generator::Configmap { name, from_literal } => {
            let mut data = serde_json::Map::new();
            for pair in from_literal {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("invalid literal source {pair}, expected key=value");
                };
                data.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
        }
    })
}

/// The Deployment `kubectl create deployment` builds: label `app=NAME`, one container per
/// image named after the image.
fn deployment(name: &str, images: &[String], replicas: i64, port: Option<i64>) -> Value {
    let mut containers: Vec<Value> = Vec::new();
    for image in images {
        let base = image.rsplit('/').next().unwrap_or(image);
        let base = base
            .split(['@', ':'])
            .next()
            .unwrap_or(base)
            .replace('_', "-");
        let mut container_name = base.clone();
        let mut n = 1;
        while containers
            .iter()
            .any(|c| c["name"] == container_name.as_str())
        {
            n += 1;
            container_name = format!("{base}-{n}");
        }
        containers.push(json!({"name": container_name, "image": image}));
    }
    if let (Some(port), Some(first)) = (port, containers.first_mut()) {
        first["ports"] = json!([{"containerPort": port}]);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_deployment_names_containers_after_their_images() {
        let d = deployment(
            "web",
            &["127.0.0.1:5000/hello:v1".into(), "nginx@sha256:abc".into()],
            2,
            Some(8000),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["name"],
            "hello"
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            8000
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][1]["name"],
            "nginx"
        );
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    }
}
