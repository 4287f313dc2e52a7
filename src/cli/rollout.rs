//! `wk rollout`: watch, list, undo, restart, pause and resume the rollouts of Deployments, as
//! `kubectl rollout` does (the same requests, the same messages).

use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use serde_json::{Value, json};

use super::output::println;
use super::target::{collection_path, object_path, object_ref, one_object, scope, with_query};
use super::{Global, Session};
use crate::api::resources::ResourceInfo;
use crate::controllers::deployment::{HASH_LABEL, revision_of, same_template};
use crate::controllers::{controlled_by, uid};

/// Flags of `wk rollout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the status of the rollout, waiting until it finishes.
    Status {
        /// `deployment NAME` or `deployment/NAME`.
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
        /// Only print the current status; do not wait.
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// How long to wait (`30s`, `5m`); 0 waits for ever.
        #[arg(long, default_value = "0s")]
        timeout: String,
    },
    /// List the revisions (or show one's pod template).
    History {
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Go back to the previous revision (or to `--to-revision`).
    Undo {
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
        /// The revision to go back to; 0 is the previous one.
        #[arg(long, default_value_t = 0)]
        to_revision: u64,
    },
    /// Replace every pod, one rollout's worth at a time.
    Restart {
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
    },
    /// Stop rolling out template changes.
    Pause {
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
    },
    /// Roll out template changes again.
    Resume {
        #[arg(value_name = "TYPE NAME", required = true)]
        args: Vec<String>,
    },
}

/// The Deployment named by `args`.
fn deployment(args: &[String]) -> anyhow::Result<(&'static ResourceInfo, String)> {
    let (res, name, rest) = one_object(args)?;
    if !rest.is_empty() {
        bail!("one object at a time: {}", rest.join(" "));
    }
    if res.kind != "Deployment" {
        bail!(
            "no rollout for {}: wk rolls out deployments",
            res.qualified()
        );
    }
    Ok((res, name))
}

/// Runs `wk rollout`.
///
/// # Errors
/// When the object is missing, the rollout fails or times out, or a revision is unknown.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let session = global.connect()?;
    match args.action {
        Action::Status {
            args,
            watch,
            timeout,
        } => {
            let (res, name) = deployment(&args)?;
            let limit = super::output::parse_duration(&timeout)?;
            status(&session, res, &name, watch, limit).await
        }
        Action::History { args, revision } => {
            let (res, name) = deployment(&args)?;
            history(&session, res, &name, revision).await
        }
        Action::Undo { args, to_revision } => {
            let (res, name) = deployment(&args)?;
            undo(&session, res, &name, to_revision).await
        }
        Action::Restart { args } => {
            let (res, name) = deployment(&args)?;
            let path = object_path(res, scope(res, &session.namespace), &name);
            let d = session.client.get(&path).await?;
            if d["spec"]["paused"] == true {
                bail!(
                    "{} \"{name}\" can't restart paused deployment (run rollout resume first)",
                    res.qualified()
                );
            }
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": now}}}}});
            merge(&session, &path, &patch).await?;
            println(&format!("{} restarted", object_ref(res, &name)));
            Ok(())
        }
        Action::Pause { args } => pause(&session, &args, true).await,
        Action::Resume { args } => pause(&session, &args, false).await,
    }
}

async fn merge(session: &Session, path: &str, patch: &Value) -> anyhow::Result<Value> {
    Ok(session
        .client
        .request(
            Method::PATCH,
            path,
            Some("application/merge-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await?)
}

async fn pause(session: &Session, args: &[String], paused: bool) -> anyhow::Result<()> {
    let (res, name) = deployment(args)?;
    let path = object_path(res, scope(res, &session.namespace), &name);
    let d = session.client.get(&path).await?;
    let word = if paused { "paused" } else { "resumed" };
    if (d["spec"]["paused"] == true) == paused {
        let state = if paused {
            "already paused"
        } else {
            "not paused"
        };
        bail!("{} \"{name}\" is {state}", res.qualified());
    }
    merge(session, &path, &json!({"spec": {"paused": paused}})).await?;
    println(&format!("{} {word}", object_ref(res, &name)));
    Ok(())
}

/// kubectl's rollout status for a Deployment: `Ok(None)` while waiting (with the message),
/// `Ok(Some(message))` when done, an error when the deadline has passed.
fn rollout_message(d: &Value) -> anyhow::Result<(bool, String)> {
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    let n = |f: &str| d["status"][f].as_i64().unwrap_or(0);
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    if generation > n("observedGeneration") {
        return Ok((
            false,
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let progressing = d["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing");
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        bail!("deployment \"{name}\" exceeded its progress deadline");
    }
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = n("updatedReplicas");
    Ok(if updated < replicas {
        (
            false,
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {replicas} new replicas have been updated..."
            ),
        )
    } else if n("replicas") > updated {
        (
            false,
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                n("replicas") - updated
            ),
        )
    } else if n("availableReplicas") < updated {
        (
            false,
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {} of {updated} updated replicas are available...",
                n("availableReplicas")
            ),
        )
    } else {
        (
            true,
            format!("deployment \"{name}\" successfully rolled out"),
        )
    })
}

async fn status(
    session: &Session,
    res: &'static ResourceInfo,
    name: &str,
    watch: bool,
    limit: Duration,
) -> anyhow::Result<()> {
    let ns = scope(res, &session.namespace);
    let path = object_path(res, ns, name);
    let wait = async {
        let mut d = session.client.get(&path).await?;
        let mut last = String::new();
        loop {
            let (done, message) = rollout_message(&d)?;
            if message != last {
                println(&message);
                last = message;
            }
            if done || !watch {
                return Ok(());
            }
            let rv = d["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .to_owned();
            let url = with_query(
                &collection_path(res, ns),
                &[
                    ("fieldSelector", &format!("metadata.name={name}")),
                    ("resourceVersion", &rv),
                    ("watch", "true"),
                ],
            );
            let mut events = session.client.watch(&url, None).await?;
            loop {
                match events.next().await? {
                    Some(e) if e["type"] == "DELETED" => {
                        bail!("{} was deleted", object_ref(res, name))
                    }
                    Some(e) if e["type"] == "MODIFIED" || e["type"] == "ADDED" => {
                        d = e["object"].clone();
                        break;
                    }
                    Some(_) => {}
                    // The watch ended: read the object again.
                    None => {
                        d = session.client.get(&path).await?;
                        break;
                    }
                }
            }
        }
    };
    if limit.is_zero() {
        wait.await
    } else {
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| bail!("timed out waiting for the condition"))
    }
}

/// The Deployment and the ReplicaSets it controls.
async fn owned_sets(
    session: &Session,
    res: &'static ResourceInfo,
    name: &str,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let ns = scope(res, &session.namespace);
    let d = session.client.get(&object_path(res, ns, name)).await?;
    let selector = d["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let sets_res = crate::api::resources::by_kind("ReplicaSet").context("replicasets")?;
    let list = session
        .client
        .get(&with_query(
            &collection_path(sets_res, ns),
            &[("labelSelector", &selector)],
        ))
        .await?;
    let mut sets: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| controlled_by(rs, "Deployment", uid(&d)))
        .cloned()
        .collect();
    sets.sort_by_key(revision_of);
    Ok((d, sets))
}

async fn history(
    session: &Session,
    res: &'static ResourceInfo,
    name: &str,
    revision: Option<u64>,
) -> anyhow::Result<()> {
    let (_, sets) = owned_sets(session, res, name).await?;
    if let Some(n) = revision {
        let rs = sets
            .iter()
            .find(|rs| revision_of(rs) == n)
            .with_context(|| format!("unable to find the specified revision {n}"))?;
        println(&format!("{} with revision #{n}", object_ref(res, name)));
        print!(
            "{}",
            super::describe::pod_template_text(&rs["spec"]["template"])
        );
        return Ok(());
    }
    let mut out = format!("{}\nREVISION\tCHANGE-CAUSE\n", object_ref(res, name));
    for rs in sets.iter().filter(|rs| revision_of(rs) > 0) {
        let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
            .as_str()
            .unwrap_or("<none>");
        out.push_str(&format!("{}\t{cause}\n", revision_of(rs)));
    }
    print!("{}", super::output::tabwrite(&out, 0, 2));
    Ok(())
}

async fn undo(
    session: &Session,
    res: &'static ResourceInfo,
    name: &str,
    to: u64,
) -> anyhow::Result<()> {
    let (d, sets) = owned_sets(session, res, name).await?;
    if sets.is_empty() {
        bail!("no rollout history found for {}", object_ref(res, name));
    }
    let target = if to == 0 {
        // The newest revision before the current one.
        let current = sets.iter().map(revision_of).max().unwrap_or(0);
        sets.iter()
            .filter(|rs| revision_of(rs) < current)
            .max_by_key(|rs| revision_of(rs))
            .with_context(|| format!("no rollout history found for {}", object_ref(res, name)))?
    } else {
        sets.iter()
            .find(|rs| revision_of(rs) == to)
            .with_context(|| format!("unable to find specified revision {to} in history"))?
    };
    let revision = revision_of(target);
    if same_template(&target["spec"]["template"], &d["spec"]["template"]) {
        println(&format!(
            "{} skipped rollback (current template already matches revision {revision})",
            object_ref(res, name)
        ));
        return Ok(());
    }
    let mut template = target["spec"]["template"].clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    // As kubectl: a JSON patch that sets the template, with the Deployment's version as a
    // precondition so a concurrent change is not overwritten.
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": d["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/spec/template", "value": template},
    ]);
    let path = object_path(res, scope(res, &session.namespace), name);
    session
        .client
        .request(
            Method::PATCH,
            &path,
            Some("application/json-patch+json"),
            Some(patch.to_string().into_bytes()),
        )
        .await?;
    println(&format!("{} rolled back", object_ref(res, name)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_kubectls() {
        let d = |generation: i64, observed: i64, updated: i64, total: i64, available: i64| {
            json!({"metadata": {"name": "web", "generation": generation},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": observed, "updatedReplicas": updated,
                           "replicas": total, "availableReplicas": available}})
        };
        let msg = |v: Value| rollout_message(&v).unwrap();
        assert_eq!(
            msg(d(2, 1, 3, 3, 3)),
            (
                false,
                "Waiting for deployment spec update to be observed...".into()
            )
        );
        assert!(
            msg(d(1, 1, 1, 4, 3))
                .1
                .contains("1 out of 3 new replicas have been updated")
        );
        assert!(
            msg(d(1, 1, 3, 4, 3))
                .1
                .contains("1 old replicas are pending termination")
        );
        assert!(
            msg(d(1, 1, 3, 3, 2))
                .1
                .contains("2 of 3 updated replicas are available")
        );
        assert_eq!(
            msg(d(1, 1, 3, 3, 3)),
            (true, "deployment \"web\" successfully rolled out".into())
        );
        let mut stuck = d(1, 1, 1, 3, 2);
        stuck["status"]["conditions"] =
            json!([{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]);
        assert_eq!(
            rollout_message(&stuck).unwrap_err().to_string(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }
}
