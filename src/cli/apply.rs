//! `wk apply -f`: client-side apply (a three-way strategic merge patch against the
//! last-applied annotation) by default, or server-side apply with `--server-side`.

use anyhow::bail;
use http::Method;
use serde_json::{Value, json};

use super::manifest::{self, Manifest};
use super::output::{println, sorted};
use super::target::{collection_path, for_object, object_path, object_ref, with_query};
use super::{Global, Reported, Session, is_not_found, report, with_prefix};
use crate::api::patch::three_way_merge_patch;
use crate::api::resources::ResourceInfo;

/// The annotation client-side apply keeps the applied manifest in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The content type of a strategic merge patch.
pub(super) const SMP: &str = "application/strategic-merge-patch+json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Flags of `wk apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories that contain the configuration to apply; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    files: Vec<String>,
    /// Process the directories given with -f recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Apply on the server (a PATCH with application/apply-patch+yaml) instead of the client.
    #[arg(long)]
    server_side: bool,
    /// With --server-side, take over fields other managers own.
    #[arg(long, requires = "server_side")]
    force_conflicts: bool,
    /// The name of the manager that tracks field ownership [default: wk for --server-side,
    /// kubectl-client-side-apply otherwise].
    #[arg(long)]
    field_manager: Option<String>,
    /// `none`, `server` (the server checks, stores nothing) or `client` (send nothing).
    #[arg(long, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client",
          value_parser = ["none", "server", "client"])]
    dry_run: String,
    /// How the server treats unknown fields: strict, warn or ignore (`true` = strict, `false` = ignore).
    #[arg(long, value_name = "MODE", default_value = "strict", num_args = 0..=1, default_missing_value = "strict",
          value_parser = ["strict", "warn", "ignore", "true", "false"])]
    validate: String,
    /// `name` prints only `TYPE/NAME` for each object.
    #[arg(short = 'o', long, value_parser = ["name"])]
    output: Option<String>,
}

/// Runs `wk apply`.
///
/// # Errors
/// When the manifests cannot be read; each object's failure is reported and the command
/// exits 1 after trying the others.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let manifests = manifest::read(&args.files, args.recursive).await?;
    let session = global.connect()?;
    let mut failed = false;
    for m in &manifests {
        match apply_one(&session, &args, m).await {
            Ok(line) => println(&line),
            Err(e) => {
                report(&e);
                failed = true;
            }
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// The `fieldValidation` value for a `--validate` flag.
pub fn field_validation(validate: &str) -> &'static str {
    match validate {
        "warn" => "Warn",
        "ignore" | "false" => "Ignore",
        _ => "Strict",
    }
}

/// Puts an object in its namespace: the manifest's, else `-n`, else the context's.
///
/// # Errors
/// When the manifest's namespace differs from an explicit `-n`, as kubectl refuses.
pub fn place(
    session: &Session,
    res: &ResourceInfo,
    object: &mut Value,
) -> anyhow::Result<Option<String>> {
    if !res.namespaced {
        return Ok(None);
    }
    let own = object["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let ns = match own {
        Some(ns) if session.explicit_namespace && ns != session.namespace => bail!(
            "the namespace from the provided object \"{ns}\" does not match the namespace \"{}\". You must pass '--namespace={ns}' to perform this operation.",
            session.namespace
        ),
        Some(ns) => ns,
        None => session.namespace.clone(),
    };
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    Ok(Some(ns))
}

async fn apply_one(session: &Session, args: &Args, m: &Manifest) -> anyhow::Result<String> {
    let res = for_object(&m.object, &m.source)?;
    let mut object = m.object.clone();
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    let ns = place(session, res, &mut object)?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        bail!(
            "error when retrieving current configuration of {} from \"{}\": resource name may not be empty",
            res.kind,
            m.source
        );
    }
    let reference = object_ref(res, &name);
    let suffix = match args.dry_run.as_str() {
        "server" => " (server dry run)",
        "client" => " (dry run)",
        _ => "",
    };
    let say = |verb: &str| {
        if args.output.is_some() {
            reference.clone()
        } else {
            format!("{reference} {verb}{suffix}")
        }
    };
    let dry_run = if args.dry_run == "server" { "All" } else { "" };
    let validation = field_validation(&args.validate);
    let path = object_path(res, ns.as_deref(), &name);

    if args.server_side {
        let manager = args.field_manager.as_deref().unwrap_or("wk");
        if args.dry_run != "client" {
            let force = if args.force_conflicts {
                "true"
            } else {
                "false"
            };
            let url = with_query(
                &path,
                &[
                    ("fieldManager", manager),
                    ("fieldValidation", validation),
                    ("force", force),
                    ("dryRun", dry_run),
                ],
            );
            session
                .client
                .request(
                    Method::PATCH,
                    &url,
                    Some(APPLY_PATCH),
                    Some(serde_json::to_vec(&object)?),
                )
                .await?;
        }
        return Ok(say("serverside-applied"));
    }

    let manager = args
        .field_manager
        .as_deref()
        .unwrap_or("kubectl-client-side-apply");
    let modified = with_last_applied(object);
    // A conflict means the object changed between the GET and the PATCH; kubectl retries 5 times.
    let mut attempt = 0;
    loop {
        let live = match session.client.get(&path).await {
            Ok(live) => live,
            Err(e) if is_not_found(&e) => {
                if args.dry_run != "client" {
                    let url = with_query(
                        &collection_path(res, ns.as_deref()),
                        &[
                            ("fieldManager", manager),
                            ("fieldValidation", validation),
                            ("dryRun", dry_run),
                        ],
                    );
                    session
                        .client
                        .request(
                            Method::POST,
                            &url,
                            Some("application/json"),
                            Some(serde_json::to_vec(&modified)?),
                        )
                        .await
                        .map_err(|e| {
                            with_prefix(e, &format!("error when creating \"{}\": ", m.source))
                        })?;
                }
                return Ok(say("created"));
            }
            Err(e) => return Err(e.into()),
        };
        let original: Option<Value> = live["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok());
        let patch =
            three_way_merge_patch(original.as_ref(), &modified, &live, res.kind).map_err(|e| {
                anyhow::anyhow!("error when computing the patch for \"{}\": {e}", m.source)
            })?;
        if patch.as_object().is_some_and(serde_json::Map::is_empty) {
            return Ok(say("unchanged"));
        }
        if args.dry_run == "client" {
            return Ok(say("configured"));
        }
        let url = with_query(
            &path,
            &[
                ("fieldManager", manager),
                ("fieldValidation", validation),
                ("dryRun", dry_run),
            ],
        );
        match session
            .client
            .request(
                Method::PATCH,
                &url,
                Some(SMP),
                Some(serde_json::to_vec(&patch)?),
            )
            .await
        {
            Ok(_) => return Ok(say("configured")),
            Err(e) if e.code() == Some(409) && attempt < 4 => attempt += 1,
            Err(e) => {
                return Err(
                    with_prefix(e, &format!("error when patching \"{}\": ", m.source)).into(),
                );
            }
        }
    }
}

/// The manifest with the last-applied annotation set to its own compact JSON, as kubectl
/// stores it: keys sorted, an `annotations` map even when empty, a trailing newline.
pub fn with_last_applied(mut object: Value) -> Value {
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let applied = format!("{}\n", sorted(&object));
    object["metadata"]["annotations"][LAST_APPLIED] = Value::String(applied);
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_applied_is_the_sorted_compact_manifest_without_itself() {
        let object = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c", "annotations": {LAST_APPLIED: "old"}}});
        let out = with_last_applied(object);
        assert_eq!(
            out["metadata"]["annotations"][LAST_APPLIED],
            "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"annotations\":{},\"name\":\"c\"}}\n"
        );
    }
}
