//! `wk describe`: kubectl's human summaries of pods, deployments and nodes (and a generic
//! one for other types), each ending with the object's events.

use anyhow::bail;
use serde_json::Value;

use super::apply::LAST_APPLIED;
use super::output::{age, describe_time, print, tabwrite, to_yaml};
use super::target::{collection_path, object_path, scope, selections, with_query};
use super::{Global, Reported, Session, report, str_at};
use crate::api::quantity::Quantity;
use crate::api::resources::ResourceInfo;

/// Flags of `wk describe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE [NAME...]` or `TYPE/NAME`; without a name, every object of the type.
    #[arg(value_name = "TYPE[.GROUP] [NAME]", required = true)]
    args: Vec<String>,
    /// Label selector, when no name is given.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Describe objects in every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Leave out the events.
    #[arg(long = "show-events", default_value_t = true, action = clap::ArgAction::Set)]
    show_events: bool,
}

/// Runs `wk describe`.
///
/// # Errors
/// When an object cannot be read; the others are still described.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let selections = selections(&args.args)?;
    let session = global.connect()?;
    let mut objects = Vec::new();
    let mut failed = false;
    for selection in &selections {
        let res = selection.res;
        let ns = if args.all_namespaces {
            None
        } else {
            scope(res, &session.namespace)
        };
        if selection.names.is_empty() {
            let url = with_query(
                &collection_path(res, ns),
                &[(
                    "labelSelector",
                    args.selector.as_deref().unwrap_or_default(),
                )],
            );
            let list = session.client.get(&url).await?;
            objects.extend(
                list["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| (res, o)),
            );
        } else {
            for name in &selection.names {
                match session.client.get(&object_path(res, ns, name)).await {
                    Ok(o) => objects.push((res, o)),
                    Err(e) => {
                        report(&e.into());
                        failed = true;
                    }
                }
            }
        }
    }
    if objects.is_empty() && !failed {
        if args.all_namespaces || !selections.iter().all(|s| s.res.namespaced) {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", session.namespace);
        }
    }
    let mut texts = Vec::new();
    for (res, object) in &objects {
        texts.push(describe(&session, res, object, args.show_events).await?);
    }
    print(&texts.join("\n\n"));
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// A describe page being written: lines with tab-separated cells, indented by level.
#[derive(Default)]
struct Page(String);

impl Page {
    fn line(&mut self, level: usize, text: &str) {
        self.0.push_str(&"  ".repeat(level));
        self.0.push_str(text);
        self.0.push('\n');
    }

    fn field(&mut self, level: usize, key: &str, value: &str) {
        self.line(level, &format!("{key}:\t{value}"));
    }

    /// `Labels:` style maps: the first entry beside the title, the rest below it.
    fn map(&mut self, level: usize, title: &str, map: &Value, sep: &str) {
        let mut entries: Vec<(String, String)> = map
            .as_object()
            .map(|m| {
                m.iter()
                    // kubectl leaves out the annotation client-side apply keeps.
                    .filter(|(k, _)| k.as_str() != LAST_APPLIED)
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        if entries.is_empty() {
            self.field(level, title, "<none>");
            return;
        }
        for (i, (k, v)) in entries.iter().enumerate() {
            let head = if i == 0 {
                format!("{title}:")
            } else {
                String::new()
            };
            self.line(level, &format!("{head}\t{k}{sep}{v}"));
        }
    }

    fn finish(self) -> String {
        tabwrite(&self.0, 0, 2)
    }
}

async fn describe(
    session: &Session,
    res: &ResourceInfo,
    object: &Value,
    show_events: bool,
) -> anyhow::Result<String> {
    let mut page = Page::default();
    match res.kind {
        "Pod" => pod(&mut page, object),
        "Deployment" => deployment(session, &mut page, object).await?,
        "Node" => node(session, &mut page, object).await?,
        _ => generic(&mut page, res, object)?,
    }
    if show_events {
        let events = events(session, res, object).await;
        write_events(&mut page, &events);
    }
    Ok(page.finish())
}

fn header(page: &mut Page, object: &Value, namespaced: bool) {
    let meta = &object["metadata"];
    page.field(0, "Name", str_at(meta, "/name"));
    if namespaced {
        page.field(0, "Namespace", str_at(meta, "/namespace"));
    }
}

fn pod(page: &mut Page, pod: &Value) {
    let (meta, spec, status) = (&pod["metadata"], &pod["spec"], &pod["status"]);
    header(page, pod, true);
    if let Some(priority) = spec["priority"].as_i64() {
        page.field(0, "Priority", &priority.to_string());
    }
    if !str_at(spec, "/priorityClassName").is_empty() {
        page.field(0, "Priority Class Name", str_at(spec, "/priorityClassName"));
    }
    if !str_at(spec, "/serviceAccountName").is_empty() {
        page.field(0, "Service Account", str_at(spec, "/serviceAccountName"));
    }
    let node = match (str_at(spec, "/nodeName"), str_at(status, "/hostIP")) {
        ("", _) => "<none>".to_owned(),
        (n, ip) => format!("{n}/{ip}"),
    };
    page.field(0, "Node", &node);
    if !status["startTime"].is_null() {
        page.field(0, "Start Time", &describe_time(&status["startTime"]));
    }
    page.map(0, "Labels", &meta["labels"], "=");
    page.map(0, "Annotations", &meta["annotations"], ": ");
    let phase = str_at(status, "/phase");
    if meta["deletionTimestamp"].is_null() {
        page.field(0, "Status", phase);
    } else {
        page.field(
            0,
            "Status",
            &format!("Terminating (lasts {})", age(&meta["deletionTimestamp"])),
        );
        page.field(
            0,
            "Termination Grace Period",
            &format!(
                "{}s",
                meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0)
            ),
        );
    }
    if !str_at(status, "/reason").is_empty() {
        page.field(0, "Reason", str_at(status, "/reason"));
    }
    if !str_at(status, "/message").is_empty() {
        page.field(0, "Message", str_at(status, "/message"));
    }
    page.field(0, "IP", str_at(status, "/podIP"));
    match status["podIPs"].as_array().filter(|a| !a.is_empty()) {
        None => page.field(0, "IPs", "<none>"),
        Some(ips) => {
            page.line(0, "IPs:");
            for ip in ips {
                page.field(1, "IP", str_at(ip, "/ip"));
            }
        }
    }
    if let Some(owner) = controller(meta) {
        page.field(
            0,
            "Controlled By",
            &format!("{}/{}", str_at(owner, "/kind"), str_at(owner, "/name")),
        );
    }
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(init) = spec["initContainers"].as_array().filter(|c| !c.is_empty()) {
        let init_statuses = status["initContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        page.line(0, "Init Containers:");
        containers(page, "", init, &init_statuses);
    }
    page.line(0, "Containers:");
    containers(
        page,
        "",
        spec["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
        &statuses,
    );
    if let Some(conditions) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
        page.line(0, "Conditions:");
        page.line(1, "Type\tStatus");
        for c in conditions {
            page.line(
                1,
                &format!("{} \t{} ", str_at(c, "/type"), str_at(c, "/status")),
            );
        }
    }
    volumes(page, 0, &spec["volumes"]);
    page.field(
        0,
        "QoS Class",
        or_default(str_at(status, "/qosClass"), "BestEffort"),
    );
    page.map(0, "Node-Selectors", &spec["nodeSelector"], "=");
    tolerations(page, 0, &spec["tolerations"]);
}

fn or_default<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() { default } else { s }
}

fn controller(meta: &Value) -> Option<&Value> {
    meta["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)
}

/// Containers as kubectl lists them: the name at level 1 (after `space`, one blank in pod
/// templates), the fields at level 2.
fn containers(page: &mut Page, space: &str, containers: &[Value], statuses: &[Value]) {
    for c in containers {
        let name = str_at(c, "/name");
        let status = statuses.iter().find(|s| s["name"] == name);
        page.line(1, &format!("{space}{name}:"));
        let l = 2;
        if let Some(s) = status {
            page.field(l, "Container ID", str_at(s, "/containerID"));
        }
        page.field(l, "Image", str_at(c, "/image"));
        if let Some(s) = status {
            page.field(l, "Image ID", str_at(s, "/imageID"));
        }
        ports(page, l, &c["ports"]);
        for (title, key) in [("Command", "command"), ("Args", "args")] {
            if let Some(items) = c[key].as_array().filter(|a| !a.is_empty()) {
                page.line(l, &format!("{title}:"));
                for item in items {
                    page.line(l + 1, item.as_str().unwrap_or_default());
                }
            }
        }
        if let Some(s) = status {
            state(page, l, "State", &s["state"]);
            if s["lastState"].as_object().is_some_and(|m| !m.is_empty()) {
                state(page, l, "Last State", &s["lastState"]);
            }
            page.field(
                l,
                "Ready",
                &s["ready"].as_bool().unwrap_or(false).to_string(),
            );
            page.field(
                l,
                "Restart Count",
                &s["restartCount"].as_i64().unwrap_or(0).to_string(),
            );
        }
        for (title, key) in [("Limits", "limits"), ("Requests", "requests")] {
            if let Some(map) = c["resources"][key].as_object().filter(|m| !m.is_empty()) {
                page.line(l, &format!("{title}:"));
                for (k, v) in map {
                    page.field(l + 1, k, &text(v));
                }
            }
        }
        env(page, l, &c["env"]);
        match c["volumeMounts"].as_array().filter(|m| !m.is_empty()) {
            None => page.field(l, "Mounts", "<none>"),
            Some(mounts) => {
                page.line(l, "Mounts:");
                for m in mounts {
                    let ro = if m["readOnly"] == true { "ro" } else { "rw" };
                    page.line(
                        l + 1,
                        &format!(
                            "{} from {} ({ro})",
                            str_at(m, "/mountPath"),
                            str_at(m, "/name")
                        ),
                    );
                }
            }
        }
    }
}

fn ports(page: &mut Page, level: usize, ports: &Value) {
    let ports = ports.as_array().map(Vec::as_slice).unwrap_or_default();
    let fmt = |key: &str| -> Vec<String> {
        ports
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p[key].as_i64().unwrap_or(0),
                    str_at(p, "/protocol")
                )
            })
            .collect()
    };
    match ports.len() {
        0 => {
            page.field(level, "Port", "<none>");
            page.field(level, "Host Port", "<none>");
        }
        1 => {
            page.field(level, "Port", &fmt("containerPort")[0]);
            page.field(level, "Host Port", &fmt("hostPort")[0]);
        }
        _ => {
            page.field(level, "Ports", &fmt("containerPort").join(", "));
            page.field(level, "Host Ports", &fmt("hostPort").join(", "));
        }
    }
}

fn state(page: &mut Page, level: usize, title: &str, state: &Value) {
    let Some((kind, detail)) = state.as_object().and_then(|m| m.iter().next()) else {
        page.field(level, title, "Waiting");
        return;
    };
    let mut name = kind.clone();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    page.field(level, title, &name);
    for (label, key) in [("Reason", "reason"), ("Message", "message")] {
        if !str_at(detail, &format!("/{key}")).is_empty() {
            page.field(level + 1, label, str_at(detail, &format!("/{key}")));
        }
    }
    if let Some(code) = detail["exitCode"].as_i64() {
        page.field(level + 1, "Exit Code", &code.to_string());
    }
    for (label, key) in [("Started", "startedAt"), ("Finished", "finishedAt")] {
        if !detail[key].is_null() {
            page.field(level + 1, label, &describe_time(&detail[key]));
        }
    }
}

fn env(page: &mut Page, level: usize, env: &Value) {
    let Some(vars) = env.as_array().filter(|e| !e.is_empty()) else {
        page.field(level, "Environment", "<none>");
        return;
    };
    page.line(level, "Environment:");
    for var in vars {
        let from = &var["valueFrom"];
        let value = if let Some(v) = var["value"].as_str() {
            v.to_owned()
        } else if !from["fieldRef"].is_null() {
            format!(
                " ({}:{})",
                or_default(str_at(from, "/fieldRef/apiVersion"), "v1"),
                str_at(from, "/fieldRef/fieldPath")
            )
        } else if !from["configMapKeyRef"].is_null() {
            format!(
                "<set to the key '{}' of config map '{}'>",
                str_at(from, "/configMapKeyRef/key"),
                str_at(from, "/configMapKeyRef/name")
            )
        } else if !from["secretKeyRef"].is_null() {
            format!(
                "<set to the key '{}' in secret '{}'>",
                str_at(from, "/secretKeyRef/key"),
                str_at(from, "/secretKeyRef/name")
            )
        } else {
            String::new()
        };
        page.field(level + 1, str_at(var, "/name"), &value);
    }
}

fn volumes(page: &mut Page, level: usize, volumes: &Value) {
    let Some(volumes) = volumes.as_array().filter(|v| !v.is_empty()) else {
        page.field(level, "Volumes", "<none>");
        return;
    };
    page.line(level, "Volumes:");
    for v in volumes {
        page.line(level + 1, &format!("{}:", str_at(v, "/name")));
        let Some((kind, source)) = v
            .as_object()
            .and_then(|m| m.iter().find(|(k, _)| *k != "name"))
        else {
            continue;
        };
        let l = level + 2;
        match kind.as_str() {
            "emptyDir" => {
                page.field(
                    l,
                    "Type",
                    "EmptyDir (a temporary directory that shares a pod's lifetime)",
                );
                page.field(l, "Medium", str_at(source, "/medium"));
                page.field(
                    l,
                    "SizeLimit",
                    or_default(&text(&source["sizeLimit"]), "<unset>"),
                );
            }
            "configMap" => {
                page.field(l, "Type", "ConfigMap (a volume populated by a ConfigMap)");
                page.field(l, "Name", str_at(source, "/name"));
                page.field(
                    l,
                    "Optional",
                    &source["optional"].as_bool().unwrap_or(false).to_string(),
                );
            }
            "secret" => {
                page.field(l, "Type", "Secret (a volume populated by a Secret)");
                page.field(l, "SecretName", str_at(source, "/secretName"));
                page.field(
                    l,
                    "Optional",
                    &source["optional"].as_bool().unwrap_or(false).to_string(),
                );
            }
            "hostPath" => {
                page.field(l, "Type", "HostPath (bare host directory volume)");
                page.field(l, "Path", str_at(source, "/path"));
                page.field(l, "HostPathType", str_at(source, "/type"));
            }
            _ => {
                page.field(l, "Type", kind);
                for (k, val) in source.as_object().into_iter().flatten() {
                    page.field(l, k, &text(val));
                }
            }
        }
    }
}

/// A scalar as text: strings bare, `null` empty, others as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn tolerations(page: &mut Page, level: usize, tolerations: &Value) {
    let items: Vec<String> = tolerations
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let mut s = str_at(t, "/key").to_owned();
            if !str_at(t, "/value").is_empty() {
                s = format!("{s}={}", str_at(t, "/value"));
            } else if str_at(t, "/operator") == "Exists" {
                s = format!("{s} op=Exists");
            }
            if !str_at(t, "/effect").is_empty() {
                s = format!("{s}:{}", str_at(t, "/effect"));
            }
            if let Some(secs) = t["tolerationSeconds"].as_i64() {
                s = format!("{s} for {secs}s");
            }
            s
        })
        .collect();
    list_field(page, level, "Tolerations", &items);
}

fn list_field(page: &mut Page, level: usize, title: &str, items: &[String]) {
    if items.is_empty() {
        page.field(level, title, "<none>");
    }
    for (i, item) in items.iter().enumerate() {
        let head = if i == 0 {
            format!("{title}:")
        } else {
            String::new()
        };
        page.line(level, &format!("{head}\t{item}"));
    }
}

/// A label selector as text: `app=web,tier in (a,b)`.
fn selector_text(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    for e in selector["matchExpressions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let key = str_at(e, "/key");
        parts.push(match str_at(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    parts.join(",")
}

async fn deployment(session: &Session, page: &mut Page, d: &Value) -> anyhow::Result<()> {
    let (meta, spec, status) = (&d["metadata"], &d["spec"], &d["status"]);
    header(page, d, true);
    page.field(
        0,
        "CreationTimestamp",
        &describe_time(&meta["creationTimestamp"]),
    );
    page.map(0, "Labels", &meta["labels"], "=");
    page.map(0, "Annotations", &meta["annotations"], ": ");
    let selector = selector_text(&spec["selector"]);
    page.field(0, "Selector", &selector);
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    page.field(
        0,
        "Replicas",
        &format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec["replicas"].as_i64().unwrap_or(1),
            n(&status["updatedReplicas"]),
            n(&status["replicas"]),
            n(&status["availableReplicas"]),
            n(&status["unavailableReplicas"])
        ),
    );
    let strategy = or_default(str_at(spec, "/strategy/type"), "RollingUpdate");
    page.field(0, "StrategyType", strategy);
    page.field(
        0,
        "MinReadySeconds",
        &n(&spec["minReadySeconds"]).to_string(),
    );
    if strategy == "RollingUpdate" {
        let text = |v: &Value| match v {
            Value::Null => "25%".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let ru = &spec["strategy"]["rollingUpdate"];
        page.field(
            0,
            "RollingUpdateStrategy",
            &format!(
                "{} max unavailable, {} max surge",
                text(&ru["maxUnavailable"]),
                text(&ru["maxSurge"])
            ),
        );
    }
    pod_template(page, &spec["template"]);
    if let Some(conditions) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
        page.line(0, "Conditions:");
        page.line(1, "Type\tStatus\tReason");
        page.line(1, "----\t------\t------");
        for c in conditions {
            page.line(
                1,
                &format!(
                    "{}\t{}\t{}",
                    str_at(c, "/type"),
                    str_at(c, "/status"),
                    str_at(c, "/reason")
                ),
            );
        }
    }
    let ns = str_at(meta, "/namespace");
    let url = with_query(
        &format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
        &[("labelSelector", &selector)],
    );
    let sets = session
        .client
        .get(&url)
        .await
        .map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let uid = str_at(meta, "/uid");
    let owned: Vec<&Value> = sets
        .iter()
        .filter(|rs| controller(&rs["metadata"]).is_some_and(|o| o["uid"] == uid))
        .collect();
    let revision = |rs: &Value| {
        str_at(
            rs,
            "/metadata/annotations/deployment.kubernetes.io~1revision",
        )
        .parse::<i64>()
        .unwrap_or(0)
    };
    let newest = owned
        .iter()
        .find(|rs| {
            crate::controllers::deployment::same_template(
                &rs["spec"]["template"],
                &spec["template"],
            )
        })
        .or_else(|| owned.iter().max_by_key(|rs| revision(rs)))
        .copied();
    let describe_rs = |rs: &Value| {
        format!(
            "{} ({}/{} replicas created)",
            str_at(rs, "/metadata/name"),
            n(&rs["status"]["replicas"]),
            n(&rs["spec"]["replicas"])
        )
    };
    let old: Vec<String> = owned
        .iter()
        .filter(|rs| newest.is_none_or(|new| !std::ptr::eq(**rs, new)))
        .filter(|rs| n(&rs["spec"]["replicas"]) > 0 || n(&rs["status"]["replicas"]) > 0)
        .map(|rs| describe_rs(rs))
        .collect();
    page.field(
        0,
        "OldReplicaSets",
        &if old.is_empty() {
            "<none>".to_owned()
        } else {
            old.join(", ")
        },
    );
    page.field(
        0,
        "NewReplicaSet",
        &newest.map_or_else(|| "<none>".to_owned(), describe_rs),
    );
    Ok(())
}

/// A pod template as `kubectl describe` and `kubectl rollout history --revision` print it.
pub fn pod_template_text(template: &Value) -> String {
    let mut page = Page(String::new());
    pod_template(&mut page, template);
    page.finish()
}

fn pod_template(page: &mut Page, template: &Value) {
    page.line(0, "Pod Template:");
    page.map(1, "Labels", &template["metadata"]["labels"], "=");
    if template["metadata"]["annotations"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        page.map(1, "Annotations", &template["metadata"]["annotations"], ": ");
    }
    let spec = &template["spec"];
    if !str_at(spec, "/serviceAccountName").is_empty() {
        page.field(1, "Service Account", str_at(spec, "/serviceAccountName"));
    }
    if let Some(init) = spec["initContainers"].as_array().filter(|c| !c.is_empty()) {
        page.line(1, "Init Containers:");
        containers(page, " ", init, &[]);
    }
    page.line(1, "Containers:");
    containers(
        page,
        " ",
        spec["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
        &[],
    );
    volumes(page, 1, &spec["volumes"]);
    page.map(1, "Node-Selectors", &spec["nodeSelector"], "=");
    tolerations(page, 1, &spec["tolerations"]);
}

async fn node(session: &Session, page: &mut Page, node: &Value) -> anyhow::Result<()> {
    let (meta, spec, status) = (&node["metadata"], &node["spec"], &node["status"]);
    let name = str_at(meta, "/name");
    header(page, node, false);
    let mut roles: Vec<String> = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                        .or_else(|| {
                            (k == "kubernetes.io/role")
                                .then(|| v.as_str().unwrap_or_default().to_owned())
                        })
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    page.field(
        0,
        "Roles",
        &if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        },
    );
    page.map(0, "Labels", &meta["labels"], "=");
    page.map(0, "Annotations", &meta["annotations"], ": ");
    page.field(
        0,
        "CreationTimestamp",
        &describe_time(&meta["creationTimestamp"]),
    );
    let taints: Vec<String> = spec["taints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let value = str_at(t, "/value");
            let kv = if value.is_empty() {
                str_at(t, "/key").to_owned()
            } else {
                format!("{}={value}", str_at(t, "/key"))
            };
            format!("{kv}:{}", str_at(t, "/effect"))
        })
        .collect();
    list_field(page, 0, "Taints", &taints);
    page.field(
        0,
        "Unschedulable",
        &spec["unschedulable"].as_bool().unwrap_or(false).to_string(),
    );
    page.line(0, "Conditions:");
    page.line(
        1,
        "Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage",
    );
    page.line(
        1,
        "----\t------\t-----------------\t------------------\t------\t-------",
    );
    for c in status["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        page.line(
            1,
            &format!(
                "{} \t{} \t{} \t{} \t{} \t{}",
                str_at(c, "/type"),
                str_at(c, "/status"),
                describe_time(&c["lastHeartbeatTime"]),
                describe_time(&c["lastTransitionTime"]),
                str_at(c, "/reason"),
                str_at(c, "/message")
            ),
        );
    }
    page.line(0, "Addresses:");
    for a in status["addresses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        page.field(1, str_at(a, "/type"), str_at(a, "/address"));
    }
    for (title, key) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        if let Some(map) = status[key].as_object() {
            page.line(0, &format!("{title}:"));
            for (k, v) in map {
                page.field(1, k, &text(v));
            }
        }
    }
    page.line(0, "System Info:");
    let info = &status["nodeInfo"];
    for (label, key) in [
        ("Machine ID", "machineID"),
        ("System UUID", "systemUUID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
        ("Kube-Proxy Version", "kubeProxyVersion"),
    ] {
        page.field(1, label, str_at(info, &format!("/{key}")));
    }
    if !str_at(spec, "/podCIDR").is_empty() {
        page.field(0, "PodCIDR", str_at(spec, "/podCIDR"));
    }
    let url = with_query(
        "/api/v1/pods",
        &[(
            "fieldSelector",
            &format!("spec.nodeName={name},status.phase!=Succeeded,status.phase!=Failed"),
        )],
    );
    let pods = session.client.get(&url).await?;
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    page.field(
        0,
        "Non-terminated Pods",
        &format!("({} in total)", pods.len()),
    );
    page.line(1, "Namespace\tName\tAge");
    page.line(1, "---------\t----\t---");
    for p in &pods {
        page.line(
            1,
            &format!(
                "{}\t{}\t{}",
                str_at(p, "/metadata/namespace"),
                str_at(p, "/metadata/name"),
                age(&p["metadata"]["creationTimestamp"])
            ),
        );
    }
    allocated(page, &status["allocatable"], &pods);
    Ok(())
}

/// The "Allocated resources" table: what the node's pods request and limit, against what the
/// node can allocate.
fn allocated(page: &mut Page, allocatable: &Value, pods: &[Value]) {
    page.line(0, "Allocated resources:");
    page.line(
        1,
        "(Total limits may be over 100 percent, i.e., overcommitted.)",
    );
    page.line(1, "Resource\tRequests\tLimits");
    page.line(1, "--------\t--------\t------");
    for resource in ["cpu", "memory", "ephemeral-storage"] {
        let total = allocatable
            .get(resource)
            .and_then(Value::as_str)
            .and_then(|q| Quantity::parse(q).ok())
            .unwrap_or_default();
        let cell = |kind: &str| {
            let sum: Quantity = pods.iter().map(|p| pod_resource(p, kind, resource)).sum();
            let shown = if resource == "cpu" {
                sum.cpu_string()
            } else {
                sum.bytes_string()
            };
            let percent = if total.millis() > 0 {
                sum.millis() * 100 / total.millis()
            } else {
                0
            };
            format!("{shown} ({percent}%)")
        };
        page.line(
            1,
            &format!("{resource}\t{}\t{}", cell("requests"), cell("limits")),
        );
    }
}

/// A pod's effective request or limit of one resource, as the scheduler counts it: the sum over
/// its containers, or the largest init container's if that is more.
fn pod_resource(pod: &Value, kind: &str, resource: &str) -> Quantity {
    let of = |c: &Value| {
        c.pointer(&format!("/resources/{kind}/{resource}"))
            .and_then(Value::as_str)
            .and_then(|q| Quantity::parse(q).ok())
            .unwrap_or_default()
    };
    let list = |field: &str| pod["spec"][field].as_array().cloned().unwrap_or_default();
    let sum: Quantity = list("containers").iter().map(of).sum();
    let init = list("initContainers")
        .iter()
        .map(of)
        .max()
        .unwrap_or_default();
    sum.max(init)
}

fn generic(page: &mut Page, res: &ResourceInfo, object: &Value) -> anyhow::Result<()> {
    let meta = &object["metadata"];
    header(page, object, res.namespaced);
    page.map(0, "Labels", &meta["labels"], "=");
    page.map(0, "Annotations", &meta["annotations"], ": ");
    let Some(map) = object.as_object() else {
        bail!("the object is not a JSON object")
    };
    for (key, value) in map
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
    {
        let mut title = key.clone();
        if let Some(first) = title.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        match value {
            Value::Object(_) | Value::Array(_) => {
                page.line(0, &format!("{title}:"));
                for line in to_yaml(value)?.lines() {
                    page.line(1, &line.replace('\t', " "));
                }
            }
            Value::String(s) => page.field(0, &title, s),
            other => page.field(0, &title, &other.to_string()),
        }
    }
    Ok(())
}

/// The events about an object, oldest first; a failed query reads as none.
async fn events(session: &Session, res: &ResourceInfo, object: &Value) -> Vec<Value> {
    let meta = &object["metadata"];
    let (name, uid) = (str_at(meta, "/name"), str_at(meta, "/uid"));
    let url = if res.namespaced {
        let ns = str_at(meta, "/namespace");
        with_query(
            &format!("/api/v1/namespaces/{ns}/events"),
            &[(
                "fieldSelector",
                &format!(
                    "involvedObject.name={name},involvedObject.namespace={ns},involvedObject.uid={uid}"
                ),
            )],
        )
    } else {
        with_query(
            "/api/v1/events",
            &[(
                "fieldSelector",
                &format!(
                    "involvedObject.name={name},involvedObject.kind={}",
                    res.kind
                ),
            )],
        )
    };
    let mut events: Vec<Value> = match session.client.get(&url).await {
        Ok(list) => list["items"].as_array().cloned().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if !res.namespaced {
        events.retain(|e| {
            let about = str_at(e, "/involvedObject/uid");
            about.is_empty() || about == uid || about == name
        });
    }
    let when = |e: &Value| {
        ["lastTimestamp", "eventTime", "firstTimestamp"]
            .iter()
            .find_map(|k| super::output::timestamp(&e[*k]))
            .or_else(|| super::output::timestamp(&e["metadata"]["creationTimestamp"]))
    };
    events.sort_by_key(|e| when(e));
    events
}

fn write_events(page: &mut Page, events: &[Value]) {
    if events.is_empty() {
        page.field(0, "Events", "<none>");
        return;
    }
    page.line(0, "Events:");
    page.line(1, "Type\tReason\tAge\tFrom\tMessage");
    page.line(1, "----\t------\t----\t----\t-------");
    for e in events {
        let first = if e["firstTimestamp"].is_null() {
            &e["eventTime"]
        } else {
            &e["firstTimestamp"]
        };
        let count = e["count"].as_i64().unwrap_or(1);
        let interval = if count > 1 {
            let last = if e["lastTimestamp"].is_null() {
                first
            } else {
                &e["lastTimestamp"]
            };
            format!("{} (x{count} over {})", age(last), age(first))
        } else if first.is_null() {
            age(&e["metadata"]["creationTimestamp"])
        } else {
            age(first)
        };
        let component = str_at(e, "/source/component");
        let mut from = if component.is_empty() {
            str_at(e, "/reportingComponent").to_owned()
        } else {
            component.to_owned()
        };
        if !str_at(e, "/source/host").is_empty() {
            from = format!("{from}, {}", str_at(e, "/source/host"));
        }
        page.line(
            1,
            &format!(
                "{}\t{}\t{interval}\t{from}\t{}",
                str_at(e, "/type"),
                str_at(e, "/reason"),
                str_at(e, "/message").trim().replace('\t', " ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_page_lists_its_containers_ports_and_environment() {
        let pod_json = json!({"metadata": {"name": "p", "namespace": "default", "labels": {"b": "2", "a": "1"}},
            "spec": {"containers": [{"name": "main", "image": "img", "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                     "env": [{"name": "GREETING", "value": "hello"}]}]},
            "status": {"phase": "Pending"}});
        let mut page = Page::default();
        pod(&mut page, &pod_json);
        write_events(&mut page, &[]);
        let text = page.finish();
        assert!(
            text.contains("Labels:       a=1\n              b=2\n"),
            "{text}"
        );
        assert!(text.contains("    Port:       8000/TCP\n"), "{text}");
        assert!(text.contains("      GREETING:  hello\n"), "{text}");
        assert!(text.ends_with("Events:          <none>\n"), "{text}");
    }

    #[test]
    fn a_node_page_sums_what_its_pods_request_and_limit() {
        let pods = [
            json!({"spec": {"containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                {"resources": {"requests": {"cpu": "250m"}}}]}}),
            json!({"spec": {"initContainers": [{"resources": {"requests": {"cpu": "1"}}}],
                "containers": [{"resources": {"requests": {"cpu": "100m"}}}]}}),
        ];
        let mut page = Page::default();
        allocated(&mut page, &json!({"cpu": "2", "memory": "1Gi"}), &pods);
        let text = page.finish();
        assert!(text.contains("cpu                1500m (75%)"), "{text}");
        assert!(
            text.contains("memory             64Mi (6%)    128Mi (12%)"),
            "{text}"
        );
        assert!(text.contains("ephemeral-storage  0 (0%)"), "{text}");
    }

    #[test]
    fn selectors_print_as_kubectl_writes_them() {
        let s = json!({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}]});
        assert_eq!(selector_text(&s), "a=1,b=2,t in (x,y)");
    }
}
