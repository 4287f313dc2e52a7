//! `wk label`: add, change (`--overwrite`) or remove (`key-`) labels with a merge patch;
//! `wk annotate` shares the code for annotations.

use anyhow::bail;
use http::Method;
use serde_json::{Map, Value, json};

use super::output::println;
use super::target::{collection_path, object_path, object_ref, resource, scope, with_query};
use super::{Global, str_at};
use crate::api::resources::ResourceInfo;

/// Flags of `wk label` and `wk annotate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME... KEY=VAL... KEY-...` or `TYPE/NAME... KEY=VAL...`.
    #[arg(value_name = "TYPE NAME KEY=VAL", required = true)]
    args: Vec<String>,
    /// Allow changing a key that already has a value.
    #[arg(long)]
    overwrite: bool,
    /// Change every object of the type that matches this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Change every object of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// Only change the object if it is still at this resourceVersion.
    #[arg(long)]
    resource_version: Option<String>,
}

/// Which metadata map a verb edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `metadata.labels`.
    Labels,
    /// `metadata.annotations`.
    Annotations,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Self::Labels => "labels",
            Self::Annotations => "annotations",
        }
    }
}

/// Runs `wk label`.
///
/// # Errors
/// On bad arguments, a missing object, or a key that has a value without `--overwrite`.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    run(args, global, Field::Labels).await
}

/// A requested change: a new value, or `None` to remove the key.
type Change = (String, Option<String>);

fn is_change(arg: &str) -> bool {
    arg.contains('=') || (arg.ends_with('-') && arg.len() > 1)
}

/// Splits the arguments into the objects and the changes.
fn parse(
    args: &[String],
    bulk: bool,
) -> anyhow::Result<(&'static ResourceInfo, Vec<String>, Vec<Change>)> {
    let split = args.iter().position(|a| is_change(a)).unwrap_or(args.len());
    let (objects, changes) = args.split_at(split);
    let Some(first) = objects.first() else {
        bail!("one or more resources must be specified as <resource> <name> or <resource>/<name>")
    };
    let (res, names) = if let Some((kind, _)) = first.split_once('/') {
        let res = resource(kind)?;
        let mut names = Vec::new();
        for o in objects {
            match o.split_once('/') {
                Some((k, n)) if std::ptr::eq(resource(k)?, res) => names.push(n.to_owned()),
                _ => {
                    bail!("all resources must be of one type when given as <resource>/<name>: {o}")
                }
            }
        }
        (res, names)
    } else {
        (resource(first)?, objects[1..].to_vec())
    };
    if names.is_empty() && !bulk {
        bail!("one or more resources must be specified as <resource> <name> or <resource>/<name>");
    }
    if changes.is_empty() {
        bail!("at least one label update is required");
    }
    let mut out = Vec::new();
    for c in changes {
        let change = match c.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None if is_change(c) => (c[..c.len() - 1].to_owned(), None),
            None => bail!("invalid label spec: {c}"),
        };
        if change.0.is_empty() {
            bail!("invalid label spec: {c}");
        }
        out.push(change);
    }
    Ok((res, names, out))
}

/// Applies label or annotation changes to the named (or selected) objects.
///
/// # Errors
/// As [`execute`].
pub async fn run(args: Args, global: &Global, field: Field) -> anyhow::Result<()> {
    let bulk = args.selector.is_some() || args.all;
    let (res, mut names, changes) = parse(&args.args, bulk)?;
    let session = global.connect()?;
    let ns = scope(res, &session.namespace);
    if bulk {
        if !names.is_empty() {
            bail!("cannot name objects together with --selector or --all");
        }
        let url = with_query(
            &collection_path(res, ns),
            &[(
                "labelSelector",
                args.selector.as_deref().unwrap_or_default(),
            )],
        );
        let list = session.client.get(&url).await?;
        names = list["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|i| str_at(i, "/metadata/name").to_owned())
            .collect();
    }
    for name in names {
        let path = object_path(res, ns, &name);
        let live = session.client.get(&path).await?;
        let current = live["metadata"][field.key()]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let patch = plan(&current, &changes, args.overwrite, field)?;
        let reference = object_ref(res, &name);
        let message = match (field, patch.is_empty()) {
            (Field::Annotations, _) => "annotated",
            (Field::Labels, true) => "not labeled",
            (Field::Labels, false) if patch.values().all(Value::is_null) => "unlabeled",
            (Field::Labels, false) => "labeled",
        };
        if !patch.is_empty() {
            let mut body = json!({"metadata": {field.key(): patch}});
            if let Some(rv) = &args.resource_version {
                body["metadata"]["resourceVersion"] = json!(rv);
            }
            session
                .client
                .request(
                    Method::PATCH,
                    &path,
                    Some("application/merge-patch+json"),
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
        }
        println(&format!("{reference} {message}"));
    }
    Ok(())
}

/// The merge-patch map for the changes; empty when nothing would change.
fn plan(
    current: &Map<String, Value>,
    changes: &[Change],
    overwrite: bool,
    field: Field,
) -> anyhow::Result<Map<String, Value>> {
    let mut patch = Map::new();
    for (key, value) in changes {
        let old = current.get(key).and_then(Value::as_str);
        match value {
            Some(v) => {
                if let Some(old) = old.filter(|o| *o != v)
                    && !overwrite
                {
                    bail!("'{key}' already has a value ({old}), and --overwrite is false");
                }
                if old != Some(v.as_str()) {
                    patch.insert(key.clone(), Value::String(v.clone()));
                }
            }
            None if old.is_some() => {
                patch.insert(key.clone(), Value::Null);
            }
            None => {
                if field == Field::Labels {
                    eprintln!("label \"{key}\" not found.");
                }
            }
        }
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_split_into_objects_and_changes() {
        let args: Vec<String> = ["pod", "a", "b", "x=1", "example.com/y-"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (res, names, changes) = parse(&args, false).unwrap();
        assert_eq!(
            (res.plural, names),
            ("pods", vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            changes,
            [
                ("x".to_owned(), Some("1".to_owned())),
                ("example.com/y".to_owned(), None)
            ]
        );
        let args: Vec<String> = ["deploy/web", "tier=front"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse(&args, false).unwrap().1, ["web"]);
    }

    #[test]
    fn changing_a_value_needs_overwrite() {
        let current: Map<String, Value> = serde_json::from_str(r#"{"tier":"front"}"#).unwrap();
        let change = [("tier".to_owned(), Some("back".to_owned()))];
        let err = plan(&current, &change, false, Field::Labels)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "'tier' already has a value (front), and --overwrite is false"
        );
        assert_eq!(
            plan(&current, &change, true, Field::Labels).unwrap()["tier"],
            "back"
        );
        assert!(
            plan(
                &current,
                &[("tier".to_owned(), Some("front".to_owned()))],
                false,
                Field::Labels
            )
            .unwrap()
            .is_empty()
        );
    }
}
