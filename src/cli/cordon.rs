//! `wk cordon` and `wk uncordon`: mark nodes unschedulable or schedulable again.

use http::Method;
use serde_json::json;

use super::output::println;
use super::target::{collection_path, object_path, object_ref, resource, with_query};
use super::{Global, str_at};

/// Flags of `wk cordon` and `wk uncordon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The nodes.
    #[arg(value_name = "NODE")]
    nodes: Vec<String>,
    /// Act on the nodes that match this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

/// Runs `wk cordon` (`cordon = true`) or `wk uncordon`.
///
/// # Errors
/// When a node is missing or the patch fails.
pub async fn execute(args: Args, global: &Global, cordon: bool) -> anyhow::Result<()> {
    let nodes = resource("nodes")?;
    let session = global.connect()?;
    let mut names = args.nodes;
    if let Some(selector) = &args.selector {
        let list = session
            .client
            .get(&with_query(
                &collection_path(nodes, None),
                &[("labelSelector", selector)],
            ))
            .await?;
        names.extend(
            list["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|n| str_at(n, "/metadata/name").to_owned()),
        );
    }
    if names.is_empty() {
        anyhow::bail!(
            "USAGE: {} NODE [flags]",
            if cordon { "cordon" } else { "uncordon" }
        );
    }
    let verb = if cordon { "cordoned" } else { "uncordoned" };
    for name in names {
        let path = object_path(nodes, None, &name);
        let node = session.client.get(&path).await?;
        let reference = object_ref(nodes, &name);
        if node["spec"]["unschedulable"].as_bool().unwrap_or(false) == cordon {
            println(&format!("{reference} already {verb}"));
            continue;
        }
        let patch =
            json!({"spec": {"unschedulable": if cordon { json!(true) } else { json!(null) }}});
        session
            .client
            .request(
                Method::PATCH,
                &path,
                Some(super::apply::SMP),
                Some(serde_json::to_vec(&patch)?),
            )
            .await?;
        println(&format!("{reference} {verb}"));
    }
    Ok(())
}

/// Flags of `wk drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node.
    #[arg(value_name = "NODE")]
    node: String,
    /// Leave DaemonSet-managed pods (their controller would put them back at once).
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes too (their data is lost).
    #[arg(long)]
    delete_emptydir_data: bool,
    /// Evict pods that no controller manages too (they are not recreated).
    #[arg(long)]
    force: bool,
    /// Give up after this long (`30s`, `5m`); 0 waits for ever.
    #[arg(long, default_value = "0s")]
    timeout: String,
}

fn pod_ref(pod: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name")
    )
}

/// Runs `wk drain`: cordons the node, then evicts its pods through the eviction subresource
/// (so PodDisruptionBudgets hold, retried every 5 s), and waits until they are gone.
///
/// # Errors
/// When a pod may not be evicted without a flag, or the timeout passes.
pub async fn drain(args: DrainArgs, global: &Global) -> anyhow::Result<()> {
    let limit = super::output::parse_duration(&args.timeout)?;
    let cordon_args = Args {
        nodes: vec![args.node.clone()],
        selector: None,
    };
    execute(cordon_args, global, true).await?;
    let session = global.connect()?;
    let pods = resource("pods")?;
    let list = session
        .client
        .get(&with_query(
            &collection_path(pods, None),
            &[("fieldSelector", &format!("spec.nodeName={}", args.node))],
        ))
        .await?;
    let items: Vec<serde_json::Value> = list["items"].as_array().cloned().unwrap_or_default();
    let (mut daemons, mut local, mut unmanaged, mut evict) = (vec![], vec![], vec![], vec![]);
    for pod in items {
        let finished = matches!(str_at(&pod, "/status/phase"), "Succeeded" | "Failed");
        let controller = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["controller"] == true))
            .map(|r| str_at(r, "/kind").to_owned());
        if controller.as_deref() == Some("DaemonSet") {
            daemons.push(pod);
            continue;
        }
        if !finished && controller.is_none() {
            unmanaged.push(pod_ref(&pod));
        }
        let empty_dir = pod["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v.get("emptyDir").is_some()));
        if !finished && empty_dir {
            local.push(pod_ref(&pod));
        }
        evict.push(pod);
    }
    let mut refusals = Vec::new();
    if !daemons.is_empty() && !args.ignore_daemonsets {
        let names: Vec<String> = daemons.iter().map(pod_ref).collect();
        refusals.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            names.join(", ")
        ));
    }
    if !local.is_empty() && !args.delete_emptydir_data {
        refusals.push(format!(
            "cannot delete Pods with local storage (use --delete-emptydir-data to override): {}",
            local.join(", ")
        ));
    }
    if !unmanaged.is_empty() && !args.force {
        refusals.push(format!(
            "cannot delete Pods that declare no controller (use --force to override): {}",
            unmanaged.join(", ")
        ));
    }
    if !refusals.is_empty() {
        anyhow::bail!(
            "unable to drain node \"{}\" due to error: {}",
            args.node,
            refusals.join(", ")
        );
    }
    if !daemons.is_empty() {
        let names: Vec<String> = daemons.iter().map(pod_ref).collect();
        eprintln!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            names.join(", ")
        );
    }
    let work = async {
        for pod in &evict {
            evict_one(&session, pod).await?;
        }
        // Evicted pods go once their containers have stopped.
        for pod in &evict {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                str_at(pod, "/metadata/namespace"),
                str_at(pod, "/metadata/name")
            );
            loop {
                match session.client.get(&path).await {
                    Ok(p) if str_at(&p, "/metadata/uid") == str_at(pod, "/metadata/uid") => {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Ok(_) => break,
                    Err(e) if e.code() == Some(404) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            println(&format!("pod/{} evicted", str_at(pod, "/metadata/name")));
        }
        Ok::<(), anyhow::Error>(())
    };
    if limit.is_zero() {
        work.await?;
    } else {
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| anyhow::anyhow!("drain did not complete within {}", args.timeout))??;
    }
    println(&format!("node/{} drained", args.node));
    Ok(())
}

/// Evicts one pod, retrying every 5 s while a disruption budget refuses (429).
async fn evict_one(session: &super::Session, pod: &serde_json::Value) -> anyhow::Result<()> {
    let (ns, name) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
    );
    println(&format!("evicting pod {ns}/{name}"));
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns}});
    loop {
        let sent = session
            .client
            .request(
                Method::POST,
                &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
                Some("application/json"),
                Some(serde_json::to_vec(&eviction)?),
            )
            .await;
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(404) => return Ok(()),
            Err(e) if e.code() == Some(429) => {
                let why = match &e {
                    crate::client::Error::Status { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                eprintln!(
                    "error when evicting pods/\"{name}\" -n \"{ns}\" (will retry after 5s): {why}"
                );
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
