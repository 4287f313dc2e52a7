//! The Job controller, as kube-controller-manager's: runs pods from a Job's template until
//! `completions` of them have succeeded (or, with no completions, one has and the rest have
//! finished), at most `parallelism` at once. Failures are retried with back-off (10 s doubling
//! to 6 min) until `backoffLimit`; `activeDeadlineSeconds` bounds the whole run. Indexed Jobs
//! give each pod its completion index (annotation, label, `JOB_COMPLETION_INDEX`, hostname).
//! Finished Jobs keep their pods, and go `ttlSecondsAfterFinished` after finishing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{condition, controlled_by, finished, name, namespace, settle, terminating, uid};
use crate::client::informer::{Action, Informer, Informers, Queue};
use crate::client::{Client, Error, events};

/// Jobs.
pub const JOBS: &str = "/apis/batch/v1/jobs";
/// The annotation and label with an Indexed Job's pod index.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";

const KIND: (&str, &str) = ("batch/v1", "Job");
const COMPONENT: &str = "job-controller";

struct Ctx {
    client: Client,
    jobs: Arc<Informer>,
    pods: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        jobs: informers.get(JOBS),
        pods: informers.get(super::PODS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.jobs, &queue);
    super::enqueue_controller(&ctx.pods, &queue, "Job");
    let informers = vec![ctx.jobs.clone(), ctx.pods.clone()];
    super::run_worker(
        "job",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

/// Whether a Job has finished: its Complete or Failed condition is True.
pub fn job_finished(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| condition(job, t).is_some_and(|c| c["status"] == "True"))
}

/// Parses `completedIndexes` ("0-2,4").
fn parse_indexes(text: &str) -> BTreeSet<i64> {
    let mut set = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    set.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    set.insert(n);
                }
            }
        }
    }
    set
}

/// Writes indexes as `completedIndexes` does: ascending, runs as ranges.
fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    for &i in set {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

fn index_of(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX]
        .as_str()
        .and_then(|i| i.parse().ok())
}

fn timestamp(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str().and_then(|t| t.parse().ok())
}

/// When a failed pod finished (its last container's end, else its creation).
fn finished_at(pod: &Value) -> Option<jiff::Timestamp> {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| timestamp(&c["state"]["terminated"]["finishedAt"]))
        .max()
        .or_else(|| timestamp(&pod["metadata"]["creationTimestamp"]))
}

/// A pod for the Job, with its completion index when Indexed.
fn pod_for(job: &Value, index: Option<i64>) -> Value {
    let template = &job["spec"]["template"];
    let job_name = name(job);
    let prefix = match index {
        Some(i) => format!("{job_name}-{i}-"),
        None => format!("{job_name}-"),
    };
    let mut metadata = super::metadata_from(job, KIND, template, super::Naming::Generated(&prefix));
    let mut spec = template["spec"].clone();
    if let Some(i) = index {
        metadata["annotations"][INDEX] = json!(i.to_string());
        metadata["labels"][INDEX] = json!(i.to_string());
        if spec["hostname"].as_str().is_none_or(str::is_empty) {
            spec["hostname"] = json!(format!("{job_name}-{i}"));
        }
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                let env = c["env"].as_array().cloned().unwrap_or_default();
                if !env.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX") {
                    let mut env = env;
                    env.push(
                        json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                        "apiVersion": "v1",
                        "fieldPath": format!("metadata.annotations['{INDEX}']")}}}),
                    );
                    c["env"] = json!(env);
                }
            }
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn record(client: &Client, job: &Value, warning: bool, reason: &str, message: &str) {
    events::record_about(client, job, KIND, COMPONENT, warning, reason, message);
}

fn job_path(job: &Value) -> String {
    format!(
        "/apis/batch/v1/namespaces/{}/jobs/{}",
        namespace(job),
        name(job)
    )
}

/// Deletes a finished Job whose time to live has passed; otherwise says when it will have.
async fn expire(ctx: &Ctx, job: &Value, kind: &str) -> Result<Action, Error> {
    let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
        return Ok(Action::Await);
    };
    let done = timestamp(&job["status"]["completionTime"])
        .or_else(|| condition(job, kind).and_then(|c| timestamp(&c["lastTransitionTime"])))
        .unwrap_or_else(jiff::Timestamp::now);
    let left = done.as_second() + ttl - crate::clock::now().as_second();
    if left > 0 {
        return Ok(Action::RequeueAfter(Duration::from_secs(
            left.unsigned_abs(),
        )));
    }
    // As the TTL-after-finished controller: in the foreground, so the pods go first.
    super::delete(&ctx.client, &job_path(job), "Foreground", Some(uid(job))).await?;
    Ok(Action::Await)
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(job) = ctx.jobs.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&job) {
        return Ok(Action::Await);
    }
    if let Some(kind) = job_finished(&job) {
        return expire(ctx, &job, kind).await;
    }
    let client = &ctx.client;
    let spec = &job["spec"];
    let now = crate::clock::now();
    let pods: Vec<Arc<Value>> = ctx
        .pods
        .owned_by(uid(&job))
        .into_iter()
        .filter(|p| controlled_by(p, "Job", uid(&job)))
        .collect();
    let active: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| !finished(p) && !terminating(p))
        .collect();
    let succeeded_pods: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .collect();
    let failed_pods: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p["status"]["phase"] == "Failed")
        .collect();
    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let old = &job["status"];
    // Counts never go back: a finished pod deleted by hand still counted.
    let mut completed = parse_indexes(old["completedIndexes"].as_str().unwrap_or_default());
    completed.extend(succeeded_pods.iter().filter_map(|p| index_of(p)));
    let succeeded = if indexed {
        i64::try_from(completed.len()).unwrap_or(0)
    } else {
        old["succeeded"]
            .as_i64()
            .unwrap_or(0)
            .max(succeeded_pods.len() as i64)
    };
    let failed = old["failed"]
        .as_i64()
        .unwrap_or(0)
        .max(failed_pods.len() as i64);
    // With restartPolicy OnFailure, failures are container restarts.
    let restarts: i64 = active
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let start = timestamp(&old["startTime"]).unwrap_or(now);
    let mut status = json!({
        "startTime": start.to_string(),
        "active": active.len(),
        "ready": active.iter().filter(|p| super::ready(p)).count(),
        "succeeded": succeeded,
        "failed": failed,
        "terminating": pods.iter().filter(|p| terminating(p) && !finished(p)).count(),
    });
    if indexed {
        status["completedIndexes"] = json!(format_indexes(&completed));
    }
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let deadline = spec["activeDeadlineSeconds"].as_i64();
    let failure = if failed + restarts > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline.is_some_and(|d| now.as_second() - start.as_second() >= d) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let mut written = Vec::new();
    let mut requeue = deadline.map(|d| {
        Duration::from_secs(
            (start.as_second() + d - now.as_second())
                .max(1)
                .unsigned_abs(),
        )
    });
    if let Some((reason, message)) = failure {
        for pod in &active {
            let path = format!("/api/v1/namespaces/{}/pods/{}", namespace(pod), name(pod));
            if let Some(gone) = super::delete(client, &path, "Background", Some(uid(pod))).await? {
                written.push(gone);
            }
        }
        status["active"] = json!(0);
        status["ready"] = json!(0);
        status["conditions"] = json!([
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
             "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()},
            {"type": "Failed", "status": "True", "reason": reason, "message": message,
             "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()}]);
        record(client, &job, true, reason, message);
        requeue = None;
    } else if complete {
        status["completionTime"] = json!(now.to_string());
        status["conditions"] = json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods",
             "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods",
             "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()}]);
        record(client, &job, false, "Completed", "Job completed");
        requeue = None;
    } else if spec["suspend"] != true {
        // Failed pods come back after a back-off: 10 s doubling, at most 6 min.
        let wait = if failed_pods.is_empty() {
            0
        } else {
            let backoff = (10i64 << (failed_pods.len() - 1).min(6)).min(360);
            let last = failed_pods.iter().filter_map(|p| finished_at(p)).max();
            last.map_or(0, |t| t.as_second() + backoff - now.as_second())
        };
        if wait > 0 {
            requeue = Some(
                Duration::from_secs(wait.unsigned_abs()).min(requeue.unwrap_or(Duration::MAX)),
            );
        } else {
            create_pods(
                ctx,
                &job,
                &active,
                &completed,
                succeeded,
                parallelism,
                &mut written,
            )
            .await?;
        }
    }
    settle(&ctx.pods, &written).await;
    let mut current = if old.is_object() {
        old.clone()
    } else {
        json!({})
    };
    if let Some(c) = current.as_object_mut() {
        c.remove("uncountedTerminatedPods");
    }
    let mut merged = current.clone();
    if let (Some(m), Some(s)) = (merged.as_object_mut(), status.as_object()) {
        for (k, v) in s {
            m.insert(k.clone(), v.clone());
        }
    }
    if merged != current {
        let path = format!("{}/status", job_path(&job));
        let written = super::merge_patch(client, &path, &json!({"status": status})).await?;
        settle(&ctx.jobs, &[written]).await;
    }
    Ok(requeue.map_or(Action::Await, Action::RequeueAfter))
}

/// Creates the pods the Job lacks: up to parallelism active, and no more than the
/// completions left (for Indexed Jobs, one per index neither done nor running).
async fn create_pods(
    ctx: &Ctx,
    job: &Value,
    active: &[&Value],
    completed: &BTreeSet<i64>,
    succeeded: i64,
    parallelism: i64,
    written: &mut Vec<Value>,
) -> Result<(), Error> {
    let spec = &job["spec"];
    let completions = spec["completions"].as_i64();
    let running = active.len() as i64;
    let wanted = match completions {
        Some(c) => parallelism.min(c - succeeded),
        // A work queue: once one pod has succeeded, the rest only finish.
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    let missing = (wanted - running).max(0);
    let indexes: Vec<Option<i64>> = if spec["completionMode"] == "Indexed" {
        let busy: BTreeSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
        (0..completions.unwrap_or(0))
            .filter(|i| !completed.contains(i) && !busy.contains(i))
            .take(usize::try_from(missing).unwrap_or(0))
            .map(Some)
            .collect()
    } else {
        vec![None; usize::try_from(missing).unwrap_or(0)]
    };
    let path = format!("/api/v1/namespaces/{}/pods", namespace(job));
    for index in indexes {
        let created = super::create_for(
            &ctx.client,
            (job, KIND, COMPONENT),
            &path,
            &pod_for(job, index),
        )
        .await?;
        record(
            &ctx.client,
            job,
            false,
            "SuccessfulCreate",
            &format!("Created pod: {}", name(&created)),
        );
        written.push(created);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set = parse_indexes("0-2,4,7-8");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 7, 8]);
        assert_eq!(format_indexes(&set), "0-2,4,7-8");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(format_indexes(&[5].into()), "5");
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job = json!({"metadata": {"name": "pi", "namespace": "ns", "uid": "u"},
            "spec": {"completionMode": "Indexed", "template": {"metadata": {"labels": {"job-name": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        let pod = pod_for(&job, Some(2));
        assert_eq!(pod["metadata"]["generateName"], "pi-2-");
        assert_eq!(pod["metadata"]["annotations"][INDEX], "2");
        assert_eq!(pod["metadata"]["labels"][INDEX], "2");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(pod["spec"]["hostname"], "pi-2");
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0]["name"],
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
        let plain = pod_for(&job, None);
        assert_eq!(plain["metadata"]["generateName"], "pi-");
        assert!(plain["spec"]["containers"][0].get("env").is_none());
    }
}
