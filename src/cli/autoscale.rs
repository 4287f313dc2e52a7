//! `wk autoscale`: a HorizontalPodAutoscaler for a Deployment, ReplicaSet or StatefulSet, as
//! `kubectl autoscale` makes one (named after its target, CPU utilisation as the metric).

use anyhow::bail;
use http::Method;
use serde_json::json;

use super::Global;
use super::output::println;
use super::target::{object_path, object_ref, one_object, scope};

/// Flags of `wk autoscale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME` or `TYPE/NAME`.
    #[arg(value_name = "TYPE[.GROUP] NAME", required = true)]
    args: Vec<String>,
    /// The upper limit for the number of pods.
    #[arg(long)]
    max: i64,
    /// The lower limit for the number of pods (the server's default, 1, when left out).
    #[arg(long)]
    min: Option<i64>,
    /// The target average CPU utilisation, as a percentage of the requested CPU (80 when left
    /// out).
    #[arg(long)]
    cpu_percent: Option<i64>,
    /// The autoscaler's name (the target's by default).
    #[arg(long)]
    name: Option<String>,
}

/// Runs `wk autoscale`.
///
/// # Errors
/// When the target is missing or cannot be scaled, or the server refuses the autoscaler.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let (res, target, rest) = one_object(&args.args)?;
    if !rest.is_empty() {
        bail!("wk autoscale takes one object, not {}", rest.len() + 1);
    }
    if res.subresource("scale").is_none() {
        bail!(
            "cannot autoscale {}: the type has no scale subresource",
            res.qualified()
        );
    }
    let session = global.connect()?;
    let ns = scope(res, &session.namespace);
    session.client.get(&object_path(res, ns, &target)).await?;
    let name = args.name.unwrap_or_else(|| target.clone());
    let mut spec = json!({"scaleTargetRef": {"apiVersion": res.api_version(), "kind": res.kind,
        "name": target}, "maxReplicas": args.max});
    if let Some(min) = args.min {
        spec["minReplicas"] = json!(min);
    }
    if let Some(pct) = args.cpu_percent {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": pct}}}]);
    }
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name}, "spec": spec});
    let hpas = crate::api::resources::lookup("autoscaling", "horizontalpodautoscalers")
        .ok_or_else(|| anyhow::anyhow!("this wk serves no autoscalers"))?;
    let path = crate::api::resources::collection_path(hpas, ns);
    session
        .client
        .request(
            Method::POST,
            &format!("{path}?fieldManager=wk-autoscale"),
            Some("application/json"),
            Some(serde_json::to_vec(&hpa)?),
        )
        .await?;
    println(&format!("{} autoscaled", object_ref(hpas, &name)));
    Ok(())
}
