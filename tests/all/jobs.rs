//! Jobs and CronJobs through kubectl against the real server and its agent.

use crate::agent::LONG;
use crate::guests::import_all;
use crate::harness::{Cluster, eventually, stderr, stdout};

fn job(name: &str, spec: &str, command: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: cmd:v1\n        command: {command}\n"
    )
}

fn wait_condition(c: &Cluster, job: &str, condition: &str) {
    let out = c.kubectl(&[
        "wait",
        &format!("--for=condition={condition}"),
        &format!("job/{job}"),
        "--timeout=90s",
    ]);
    assert!(
        out.status.success(),
        "job/{job} never {condition}: {}\n{}\n{}",
        stderr(&out),
        stdout(&c.kubectl(&["get", "job", job, "-o", "yaml"])),
        stdout(&c.kubectl(&["get", "pods", "-o", "wide"]))
    );
}

#[test]
fn jobs_complete_by_index_fail_by_backoff_or_deadline_and_expire() {
    let c = Cluster::with_agent();
    import_all(&c);
    // Indexed: three completions, two at a time, each pod told its index.
    c.kubectl_apply(&job(
        "indexed",
        "  completions: 3\n  parallelism: 2\n  completionMode: Indexed\n",
        "[cmd, env-args]",
    ));
    // Fails at once, with no retries.
    c.kubectl_apply(&job("fails", "  backoffLimit: 0\n", "[cmd, exit, \"3\"]"));
    // Runs past its deadline.
    c.kubectl_apply(&job(
        "slow",
        "  activeDeadlineSeconds: 2\n",
        "[cmd, sleep, \"600000\"]",
    ));
    // Done, then gone with its pod a second later.
    c.kubectl_apply(&job(
        "brief",
        "  ttlSecondsAfterFinished: 1\n",
        "[cmd, exit, \"0\"]",
    ));

    wait_condition(&c, "indexed", "complete");
    assert_eq!(c.jsonpath("job", "indexed", "{.status.succeeded}"), "3");
    assert_eq!(
        c.jsonpath("job", "indexed", "{.status.completedIndexes}"),
        "0-2"
    );
    let pod = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "job-name=indexed,batch.kubernetes.io/job-completion-index=1",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(pod.starts_with("indexed-1-"), "{pod}");
    let logs = c.kubectl_ok(&["logs", &pod]);
    assert!(logs.contains("env:JOB_COMPLETION_INDEX=1"), "{logs}");
    assert_eq!(c.jsonpath("pod", &pod, "{.spec.hostname}"), "indexed-1");

    wait_condition(&c, "fails", "failed");
    assert_eq!(
        c.jsonpath(
            "job",
            "fails",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );
    assert_eq!(c.jsonpath("job", "fails", "{.status.failed}"), "1");

    wait_condition(&c, "slow", "failed");
    assert_eq!(
        c.jsonpath(
            "job",
            "slow",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "DeadlineExceeded"
    );
    // Its running pod was stopped.
    let mut left = String::new();
    assert!(
        eventually(LONG, || {
            left = stdout(&c.kubectl(&[
                "get",
                "pods",
                "-l",
                "job-name=slow",
                "--field-selector",
                "status.phase=Running",
                "-o",
                "name",
            ]));
            left.trim().is_empty()
        }),
        "{left}"
    );

    assert!(
        eventually(LONG, || {
            left = stdout(&c.kubectl(&["get", "job,pods", "-l", "job-name=brief", "-o", "name"]))
                + &stdout(&c.kubectl(&["get", "job", "brief", "-o", "name"]));
            left.trim().is_empty()
        }),
        "the finished job outlived its TTL: {left}"
    );
}

#[test]
fn a_cronjob_every_minute_makes_jobs() {
    let c = Cluster::with_agent();
    import_all(&c);
    c.kubectl_apply(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\nspec:\n  schedule: \"* * * * *\"\n  timeZone: Etc/UTC\n  successfulJobsHistoryLimit: 1\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: main\n            image: cmd:v1\n            command: [cmd, exit, \"0\"]\n",
    );
    // The first minute boundary comes within 60 s.
    let mut jobs = String::new();
    assert!(
        eventually(std::time::Duration::from_secs(75), || {
            jobs = stdout(&c.kubectl(&["get", "jobs", "-o", "name"]));
            !jobs.trim().is_empty()
        }),
        "no job was made: {}",
        stdout(&c.kubectl(&["get", "cronjob", "tick", "-o", "yaml"]))
    );
    let job = jobs
        .trim()
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("job.batch/")
        .to_owned();
    assert!(job.starts_with("tick-"), "{job}");
    let minute: i64 = job.trim_start_matches("tick-").parse().unwrap();
    let scheduled = c.jsonpath("cronjob", "tick", "{.status.lastScheduleTime}");
    let at: jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(
        at.as_second(),
        minute * 60,
        "named after its scheduled minute"
    );
    assert_eq!(
        c.jsonpath("job", &job, "{.metadata.ownerReferences[0].kind}"),
        "CronJob"
    );
    wait_condition(&c, &job, "complete");
    assert!(
        eventually(LONG, || !c
            .jsonpath("cronjob", "tick", "{.status.lastSuccessfulTime}")
            .is_empty()),
        "{}",
        stdout(&c.kubectl(&["get", "cronjob", "tick", "-o", "yaml"]))
    );
}
