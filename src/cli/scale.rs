//! `wk scale`: set `spec.replicas` through the `/scale` subresource, optionally only if the
//! current size is what the caller expects.

use anyhow::bail;
use http::Method;
use serde_json::json;

use super::output::println;
use super::target::{object_path, object_ref, one_object, scope};
use super::{Global, str_at};

/// Flags of `wk scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME...` or `TYPE/NAME...`.
    #[arg(value_name = "TYPE[.GROUP] NAME", required = true)]
    args: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    replicas: i64,
    /// Only scale if the current number of replicas is this (checked with a resourceVersion).
    #[arg(long)]
    current_replicas: Option<i64>,
}

/// Runs `wk scale`.
///
/// # Errors
/// When the object is missing, cannot be scaled, or its size is not `--current-replicas`.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let (res, first, rest) = one_object(&args.args)?;
    let mut names = vec![first];
    for r in rest {
        match r.split_once('/') {
            Some((_, name)) => names.push(name.to_owned()),
            None => names.push(r),
        }
    }
    if res.subresource("scale").is_none() {
        bail!(
            "cannot scale {}: the type has no scale subresource",
            res.qualified()
        );
    }
    let session = global.connect()?;
    let ns = scope(res, &session.namespace);
    for name in names {
        let path = object_path(res, ns, &name);
        session.client.get(&path).await?;
        let scale_path = format!("{path}/scale");
        match args.current_replicas {
            None => {
                let body = json!({"spec": {"replicas": args.replicas}});
                session
                    .client
                    .request(
                        Method::PATCH,
                        &scale_path,
                        Some("application/merge-patch+json"),
                        Some(serde_json::to_vec(&body)?),
                    )
                    .await?;
            }
            Some(expected) => {
                let mut scale = session.client.get(&scale_path).await?;
                let actual = scale["spec"]["replicas"].as_i64().unwrap_or(0);
                if actual != expected {
                    bail!("Expected replicas to be {expected}, was {actual}");
                }
                if str_at(&scale, "/metadata/resourceVersion").is_empty() {
                    bail!(
                        "the scale of {} has no resourceVersion to update against",
                        object_ref(res, &name)
                    );
                }
                scale["spec"]["replicas"] = json!(args.replicas);
                session
                    .client
                    .request(
                        Method::PUT,
                        &scale_path,
                        Some("application/json"),
                        Some(serde_json::to_vec(&scale)?),
                    )
                    .await?;
            }
        }
        println(&format!("{} scaled", object_ref(res, &name)));
    }
    Ok(())
}
