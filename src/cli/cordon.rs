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
                Some("application/strategic-merge-patch+json"),
                Some(serde_json::to_vec(&patch)?),
            )
            .await?;
        println(&format!("{reference} {verb}"));
    }
    Ok(())
}
