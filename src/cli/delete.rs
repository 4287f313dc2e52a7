//! `wk delete`: by type and name, by file, by label selector or `--all`; then waits until
//! each object is gone, as kubectl does.

use std::time::{Duration, Instant};

use anyhow::bail;
use http::Method;
use serde_json::json;

use super::manifest;
use super::output::{parse_duration, println};
use super::target::{
    collection_path, for_object, kind_ref, object_path, scope, selections, with_query,
};
use super::{Global, Reported, is_not_found, report, str_at};
use crate::api::resources::ResourceInfo;

/// Flags of `wk delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME...` or `TYPE/NAME...`; with -l or --all, only `TYPE`.
    #[arg(value_name = "TYPE[.GROUP] [NAME]")]
    args: Vec<String>,
    /// Delete the objects in these files; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    files: Vec<String>,
    /// Process the directories given with -f recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Delete the objects that match this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete the objects that match this field selector.
    #[arg(long)]
    field_selector: Option<String>,
    /// Delete every object of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// With -l or --all, look in every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Treat a missing object as deleted.
    #[arg(long)]
    ignore_not_found: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    wait: bool,
    /// How long to wait for the objects to go (`60s`, `2m`).
    #[arg(long, default_value = "60s")]
    timeout: String,
    /// Seconds the object has to terminate; -1 keeps the type's default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// Delete at once (a grace period of 1 second).
    #[arg(long)]
    now: bool,
    /// With --grace-period=0, remove objects without waiting for them to stop.
    #[arg(long)]
    force: bool,
    /// `none` or `server` (the server checks, deletes nothing).
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = ["none", "server", "client"])]
    dry_run: String,
}

/// One object to delete.
struct Victim {
    res: &'static ResourceInfo,
    namespace: Option<String>,
    name: String,
}

/// Runs `wk delete`.
///
/// # Errors
/// On bad arguments; a failed delete is reported and the others still run.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let timeout = parse_duration(&args.timeout)?;
    let session = global.connect()?;
    let mut victims = Vec::new();
    if !args.files.is_empty() {
        if !args.args.is_empty() {
            bail!("resource(s) were provided, but also -f; use one or the other");
        }
        for m in manifest::read(&args.files, args.recursive).await? {
            let res = for_object(&m.object, &m.source)?;
            let ns = str_at(&m.object, "/metadata/namespace");
            let ns = if ns.is_empty() {
                session.namespace.clone()
            } else {
                ns.to_owned()
            };
            let name = str_at(&m.object, "/metadata/name").to_owned();
            victims.push(Victim {
                res,
                namespace: res.namespaced.then_some(ns),
                name,
            });
        }
    } else {
        let selections = selections(&args.args)?;
        let bulk = args.selector.is_some() || args.field_selector.is_some() || args.all;
        for selection in selections {
            let res = selection.res;
            if selection.names.is_empty() {
                if !bulk {
                    bail!("resource(s) were provided, but no name was specified");
                }
                let ns = if args.all_namespaces {
                    None
                } else {
                    scope(res, &session.namespace)
                };
                let url = with_query(
                    &collection_path(res, ns),
                    &[
                        (
                            "labelSelector",
                            args.selector.as_deref().unwrap_or_default(),
                        ),
                        (
                            "fieldSelector",
                            args.field_selector.as_deref().unwrap_or_default(),
                        ),
                    ],
                );
                let list = session.client.get(&url).await?;
                for item in list["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let ns = str_at(item, "/metadata/namespace");
                    victims.push(Victim {
                        res,
                        namespace: (res.namespaced && !ns.is_empty()).then(|| ns.to_owned()),
                        name: str_at(item, "/metadata/name").to_owned(),
                    });
                }
            } else {
                if bulk {
                    bail!("name cannot be provided when a selector or --all is specified");
                }
                for name in selection.names {
                    victims.push(Victim {
                        res,
                        namespace: scope(res, &session.namespace).map(str::to_owned),
                        name,
                    });
                }
            }
        }
        if victims.is_empty() {
            eprintln!("No resources found");
            return Ok(());
        }
    }

    let mut options = json!({"propagationPolicy": "Background"});
    let grace = if args.now {
        1
    } else if args.force && args.grace_period < 0 {
        0
    } else {
        args.grace_period
    };
    if grace >= 0 {
        options["gracePeriodSeconds"] = json!(grace);
    }
    let (suffix, dry_run) = match args.dry_run.as_str() {
        "server" => (" (server dry run)", "All"),
        "client" => (" (dry run)", ""),
        _ => ("", ""),
    };
    if args.force && grace == 0 {
        eprintln!(
            "Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely."
        );
    }
    let mut failed = false;
    let mut waiting: Vec<(&Victim, String)> = Vec::new();
    for v in &victims {
        let path = object_path(v.res, v.namespace.as_deref(), &v.name);
        let shown = format!("{} \"{}\"", kind_ref(v.res), v.name);
        if args.dry_run == "client" {
            println(&format!("{shown} deleted{suffix}"));
            continue;
        }
        let url = with_query(&path, &[("dryRun", dry_run)]);
        match session
            .client
            .request(
                Method::DELETE,
                &url,
                Some("application/json"),
                Some(serde_json::to_vec(&options)?),
            )
            .await
        {
            Ok(answer) => {
                println(&format!("{shown} deleted{suffix}"));
                let uid = str_at(&answer, "/metadata/uid").to_owned();
                if dry_run.is_empty() {
                    waiting.push((v, uid));
                }
            }
            Err(e) if is_not_found(&e) && args.ignore_not_found => {}
            Err(e) => {
                report(&e.into());
                failed = true;
            }
        }
    }
    if args.wait {
        let deadline = Instant::now() + timeout;
        for (v, uid) in waiting {
            if !wait_gone(&session.client, v, &uid, deadline).await? {
                eprintln!(
                    "error: timed out waiting for the condition on {}/{}",
                    v.res.qualified(),
                    v.name
                );
                failed = true;
            }
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// Polls until the object is gone (404, or replaced by a new object with another uid).
async fn wait_gone(
    client: &crate::client::Client,
    v: &Victim,
    uid: &str,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let path = object_path(v.res, v.namespace.as_deref(), &v.name);
    loop {
        match client.get(&path).await {
            Err(e) if is_not_found(&e) => return Ok(true),
            Err(e) => return Err(e.into()),
            Ok(live) => {
                let live_uid = live["metadata"]["uid"].as_str().map(str::to_owned);
                if !uid.is_empty() && live_uid.as_deref().is_some_and(|u| u != uid)
                    || live["kind"] == "Status"
                {
                    return Ok(true);
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
