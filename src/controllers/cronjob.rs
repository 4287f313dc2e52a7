//! The CronJob controller, as kube-controller-manager's: at each time the schedule names (in
//! `timeZone`, else the server's zone) it creates a Job from the template, named
//! `<cronjob>-<minutes since the epoch>`. Missed times are caught up once, with the newest
//! only, unless `startingDeadlineSeconds` says it is too late. concurrencyPolicy Allow, Forbid
//! or Replace; suspend; successful and failed history limits.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::job::{JOBS, job_finished};
use super::{controlled_by, name, namespace, settle, terminating, uid};
use crate::client::informer::{Action, Informer, Informers, Queue};
use crate::client::{Client, Error, events};

const KIND: (&str, &str) = ("batch/v1", "CronJob");
/// CronJobs.
pub const CRONJOBS: &str = "/apis/batch/v1/cronjobs";
/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed times beyond this are not all looked at (Kubernetes warns at 100).
const TOO_MANY_MISSED: usize = 100;

/// A parsed five-field schedule: a bit per allowed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day-of-month or day-of-week was `*` (then both must match, else either).
    any_day: bool,
}

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(min + u32::try_from(i).unwrap_or(0));
        }
        s.parse::<u32>()
            .map_err(|_| format!("invalid value \"{s}\""))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid step \"{s}\""))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{range} is out of range ({min}-{max})"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// The first whole minute after `t`.
fn minute_after(t: jiff::Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60) + 60).ok()
}

impl Schedule {
    /// Parses a standard cron schedule (five fields, names, ranges, steps, and the
    /// `@hourly`-style macros).
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = f[..] else {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text}",
                f.len()
            ));
        };
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        Ok(Self {
            minutes: field(minute, 0, 59, &[])?,
            hours: field(hour, 0, 23, &[])?,
            days: field(dom, 1, 31, &[])?,
            months: field(month, 1, 12, MONTHS)?,
            // Sunday is 0 or 7.
            weekdays: {
                let bits = field(dow, 0, 7, DAYS)?;
                (bits | (bits >> 7)) & 0x7f
            },
            any_day: dom.starts_with('*') || dom == "?" || dow.starts_with('*') || dow == "?",
        })
    }

    fn matches(&self, t: &jiff::Zoned) -> bool {
        let bit = |set: u64, v: i8| set & (1 << v) != 0;
        let day = bit(self.days, t.day());
        let weekday = bit(self.weekdays, t.weekday().to_sunday_zero_offset());
        let day_ok = if self.any_day {
            day && weekday
        } else {
            day || weekday
        };
        bit(self.minutes, t.minute())
            && bit(self.hours, t.hour())
            && bit(self.months, t.month())
            && day_ok
    }

    /// The scheduled times after `after` up to and including `until` (the newest last), at
    /// most `limit` of them (the newest kept), and how many there were.
    pub fn between(
        &self,
        after: jiff::Timestamp,
        until: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
        limit: usize,
    ) -> (Vec<jiff::Timestamp>, usize) {
        let mut found = std::collections::VecDeque::new();
        let mut count = 0;
        let mut t = minute_after(after).unwrap_or(until);
        // A year of minutes at most: schedules that never fire (Feb 30) end here.
        let mut steps = 0;
        while t <= until && steps < 527_040 {
            if self.matches(&t.to_zoned(tz.clone())) {
                count += 1;
                found.push_back(t);
                if found.len() > limit {
                    found.pop_front();
                }
            }
            t += jiff::SignedDuration::from_secs(60);
            steps += 1;
        }
        (found.into(), count)
    }

    /// The first scheduled time after `after`, within a year.
    pub fn next(&self, after: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> Option<jiff::Timestamp> {
        let year = after + jiff::SignedDuration::from_hours(24 * 366);
        let mut t = minute_after(after)?;
        while t <= year {
            if self.matches(&t.to_zoned(tz.clone())) {
                return Some(t);
            }
            t += jiff::SignedDuration::from_secs(60);
        }
        None
    }
}

/// The schedule and zone of a CronJob (`CRON_TZ=`/`TZ=` prefixes, or `timeZone`).
fn schedule_of(cj: &Value) -> Result<(Schedule, jiff::tz::TimeZone), String> {
    let mut text = cj["spec"]["schedule"].as_str().unwrap_or_default().trim();
    let mut zone = cj["spec"]["timeZone"].as_str().map(str::to_owned);
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let (z, s) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            zone = Some(z.to_owned());
            text = s.trim();
        }
    }
    let tz = match zone {
        Some(z) => jiff::tz::TimeZone::get(&z).map_err(|_| format!("unknown time zone {z}"))?,
        None => jiff::tz::TimeZone::system(),
    };
    Ok((Schedule::parse(text)?, tz))
}

struct Ctx {
    client: Client,
    cronjobs: Arc<Informer>,
    jobs: Arc<Informer>,
}

/// Registers the controller's handlers on the shared informers and starts its worker.
pub fn start(client: &Client, informers: &Informers, shutdown: &CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cronjobs: informers.get(CRONJOBS),
        jobs: informers.get(JOBS),
    });
    let queue = Queue::new();
    super::enqueue_self(&ctx.cronjobs, &queue);
    super::enqueue_controller(&ctx.jobs, &queue, "CronJob");
    let informers = vec![ctx.cronjobs.clone(), ctx.jobs.clone()];
    super::run_worker(
        "cronjob",
        informers,
        queue,
        shutdown,
        ctx,
        |ctx, key| async move { reconcile(&ctx, &key).await },
    );
}

fn record(client: &Client, cj: &Value, warning: bool, reason: &str, message: &str) {
    events::record_about(
        client,
        cj,
        KIND,
        "cronjob-controller",
        warning,
        reason,
        message,
    );
}

fn job_path(ns: &str, job: &str) -> String {
    format!("/apis/batch/v1/namespaces/{ns}/jobs/{job}")
}

/// Deletes one of the CronJob's Jobs (its pods after it), with an event; what was deleted,
/// unless it was gone already.
async fn delete_job(client: &Client, cj: &Value, job: &Value) -> Result<Option<Value>, Error> {
    let path = job_path(namespace(cj), name(job));
    let gone = super::delete(client, &path, "Background", Some(uid(job))).await?;
    if gone.is_some() {
        let message = format!("Deleted job {}", name(job));
        record(client, cj, false, "SuccessfulDelete", &message);
    }
    Ok(gone)
}

fn reference(job: &Value) -> Value {
    json!({"kind": "Job", "apiVersion": "batch/v1", "namespace": namespace(job),
           "name": name(job), "uid": uid(job), "resourceVersion": job["metadata"]["resourceVersion"]})
}

/// A Job from the CronJob's template for the time `at`.
fn job_for(cj: &Value, at: jiff::Timestamp) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let job = format!("{}-{}", name(cj), at.as_second() / 60);
    let mut metadata = super::metadata_from(cj, KIND, template, super::Naming::Exactly(&job));
    metadata["annotations"][SCHEDULED] = json!(at.to_string());
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]})
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Action, Error> {
    let Some(cj) = ctx.cronjobs.get(key) else {
        return Ok(Action::Await);
    };
    if terminating(&cj) {
        return Ok(Action::Await);
    }
    let client = &ctx.client;
    let ns = namespace(&cj);
    let mut jobs: Vec<Arc<Value>> = ctx
        .jobs
        .owned_by(uid(&cj))
        .into_iter()
        .filter(|j| controlled_by(j, "CronJob", uid(&cj)) && !terminating(j))
        .collect();
    jobs.sort_by_key(|j| {
        j["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned)
    });
    let mut written = Vec::new();
    // History: the newest finished Jobs of each kind are kept.
    for (kind, field, default) in [
        ("Complete", "successfulJobsHistoryLimit", 3),
        ("Failed", "failedJobsHistoryLimit", 1),
    ] {
        let done: Vec<&Arc<Value>> = jobs
            .iter()
            .filter(|j| job_finished(j) == Some(kind))
            .collect();
        let keep =
            usize::try_from(cj["spec"][field].as_i64().unwrap_or(default).max(0)).unwrap_or(0);
        for job in done.iter().take(done.len().saturating_sub(keep)) {
            written.extend(delete_job(client, &cj, job).await?);
        }
    }
    let active: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j).is_none()).collect();
    let mut status = json!({"active": active.iter().map(|j| reference(j)).collect::<Vec<_>>()});
    if active.is_empty() {
        status["active"] = Value::Null;
    }
    if let Some(t) = cj["status"]["lastScheduleTime"].as_str() {
        status["lastScheduleTime"] = json!(t);
    }
    let last_success = jobs
        .iter()
        .filter(|j| job_finished(j) == Some("Complete"))
        .filter_map(|j| j["status"]["completionTime"].as_str())
        .max()
        .map(str::to_owned)
        .or_else(|| {
            cj["status"]["lastSuccessfulTime"]
                .as_str()
                .map(str::to_owned)
        });
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(t);
    }
    let mut requeue = None;
    if cj["spec"]["suspend"] != true {
        match schedule_of(&cj) {
            Err(why) => {
                if cj["status"]["lastScheduleTime"].is_null() {
                    record(client, &cj, true, "InvalidSchedule", &why);
                }
            }
            Ok((schedule, tz)) => {
                let now = crate::clock::now();
                let created = cj["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(now);
                let mut earliest = cj["status"]["lastScheduleTime"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(created);
                let deadline = cj["spec"]["startingDeadlineSeconds"].as_i64();
                if let Some(d) = deadline {
                    let floor = now - jiff::SignedDuration::from_secs(d);
                    earliest = earliest.max(floor);
                }
                let (missed, count) = schedule.between(earliest, now, &tz, 1);
                if count > TOO_MANY_MISSED {
                    record(
                        client,
                        &cj,
                        true,
                        "TooManyMissedTimes",
                        &format!(
                            "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                        ),
                    );
                }
                if let Some(&at) = missed.last() {
                    run_at(ctx, &cj, at, &active, &mut status, &mut written).await?;
                }
                if let Some(next) = schedule.next(now, &tz) {
                    let wait = (next.as_second() - now.as_second()).max(1);
                    requeue = Some(Duration::from_secs(wait.unsigned_abs()));
                }
            }
        }
    }
    settle(&ctx.jobs, &written).await;
    let mut current = cj["status"].clone();
    if current.is_null() {
        current = json!({});
    }
    let mut wanted = status.clone();
    if let Some(w) = wanted.as_object_mut() {
        w.retain(|_, v| !v.is_null());
    }
    if current != wanted {
        let path = format!(
            "/apis/batch/v1/namespaces/{ns}/cronjobs/{}/status",
            name(&cj)
        );
        let written = super::merge_patch(client, &path, &json!({"status": status})).await?;
        settle(&ctx.cronjobs, &[written]).await;
    }
    Ok(requeue.map_or(Action::Await, Action::RequeueAfter))
}

/// Starts the Job for time `at`, as concurrencyPolicy allows.
async fn run_at(
    ctx: &Ctx,
    cj: &Value,
    at: jiff::Timestamp,
    active: &[&Arc<Value>],
    status: &mut Value,
    written: &mut Vec<Value>,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = namespace(cj);
    match cj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow") {
        "Forbid" if !active.is_empty() => {
            record(
                client,
                cj,
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
            );
            // The time counts as handled: it is not run late when the active one ends.
            status["lastScheduleTime"] = json!(at.to_string());
            return Ok(());
        }
        "Replace" => {
            for job in active {
                written.extend(delete_job(client, cj, job).await?);
            }
            status["active"] = Value::Null;
        }
        _ => {}
    }
    let job = job_for(cj, at);
    match super::create(
        client,
        &format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        &job,
    )
    .await
    {
        Ok(created) => {
            record(
                client,
                cj,
                false,
                "SuccessfulCreate",
                &format!("Created job {}", name(&created)),
            );
            let mut refs = status["active"].as_array().cloned().unwrap_or_default();
            refs.push(reference(&created));
            status["active"] = json!(refs);
            written.push(created);
        }
        // Made before (this controller restarted before writing its status).
        Err(e) if e.code() == Some(409) => {}
        Err(e) => return Err(e),
    }
    status["lastScheduleTime"] = json!(at.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_parse_like_cron() {
        let utc = jiff::tz::TimeZone::UTC;
        let every_15 = Schedule::parse("*/15 * * * *").unwrap();
        let (times, n) = every_15.between(
            at("2026-12-01T00:00:00Z"),
            at("2026-12-01T01:00:00Z"),
            &utc,
            10,
        );
        assert_eq!(n, 4);
        assert_eq!(times.last(), Some(&at("2026-12-01T01:00:00Z")));
        // Weekdays at 9:30; 2026-12-05 is a Saturday.
        let weekdays = Schedule::parse("30 9 * * mon-fri").unwrap();
        assert_eq!(
            weekdays.next(at("2026-12-04T10:00:00Z"), &utc),
            Some(at("2026-12-07T09:30:00Z"))
        );
        // Day of month OR day of week when both are given.
        let either = Schedule::parse("0 0 1 * sun").unwrap();
        assert_eq!(
            either.next(at("2026-12-01T00:00:00Z"), &utc),
            Some(at("2026-12-06T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::parse("0 * * * *").unwrap()
        );
        assert_eq!(
            Schedule::parse("0 0 * * 7").unwrap(),
            Schedule::parse("0 0 * * 0").unwrap()
        );
        assert!(
            Schedule::parse("61 * * * *")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(Schedule::parse("* * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("*/0 * * * *").is_err());
        // Feb 30 never comes.
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next(at("2026-12-01T00:00:00Z"), &utc),
            None
        );
    }

    #[test]
    fn a_time_zone_moves_the_hour() {
        let cj = json!({"spec": {"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}});
        let (s, tz) = schedule_of(&cj).unwrap();
        assert_eq!(
            s.next(at("2026-12-01T00:30:00Z"), &tz),
            Some(at("2026-12-02T00:00:00Z"))
        );
        let prefixed = json!({"spec": {"schedule": "CRON_TZ=Asia/Tokyo 0 9 * * *"}});
        let (s, tz) = schedule_of(&prefixed).unwrap();
        assert_eq!(
            s.next(at("2026-12-01T00:30:00Z"), &tz),
            Some(at("2026-12-02T00:00:00Z"))
        );
        let bad = json!({"spec": {"schedule": "0 9 * * *", "timeZone": "Mars/Olympus"}});
        assert!(schedule_of(&bad).unwrap_err().contains("unknown time zone"));
    }

    #[test]
    fn only_the_newest_missed_time_is_kept() {
        let s = Schedule::parse("* * * * *").unwrap();
        let (times, n) = s.between(
            at("2026-12-01T00:00:30Z"),
            at("2026-12-01T03:00:00Z"),
            &jiff::tz::TimeZone::UTC,
            1,
        );
        assert_eq!(n, 180);
        assert_eq!(times, [at("2026-12-01T03:00:00Z")]);
    }

    #[test]
    fn jobs_are_named_by_their_minute() {
        let cj = json!({"metadata": {"name": "tick", "namespace": "ns", "uid": "u"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {}}}}});
        let job = job_for(&cj, at("2026-12-01T00:01:00Z"));
        assert_eq!(
            job["metadata"]["name"],
            format!("tick-{}", at("2026-12-01T00:01:00Z").as_second() / 60)
        );
        assert_eq!(job["metadata"]["labels"]["a"], "b");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
}
