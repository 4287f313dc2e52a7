//! `wk api-resources`: the resource types the server serves, read from its discovery
//! documents.

use serde_json::Value;

use super::output::{print, table};
use super::{Global, str_at};

/// Flags of `wk api-resources`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only types in this API group (`""` for core).
    #[arg(long)]
    api_group: Option<String>,
    /// Only namespaced (`true`) or cluster-scoped (`false`) types.
    #[arg(long)]
    namespaced: Option<bool>,
    /// `wide` adds VERBS and CATEGORIES; `name` prints `plural.group` only.
    #[arg(short = 'o', long, value_parser = ["wide", "name"])]
    output: Option<String>,
    /// Leave out the header row.
    #[arg(long)]
    no_headers: bool,
}

/// One served resource type.
struct Row {
    group: String,
    api_version: String,
    resource: Value,
}

/// Runs `wk api-resources`.
///
/// # Errors
/// When discovery fails.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let session = global.connect()?;
    let client = &session.client;
    let mut versions: Vec<(String, String)> = Vec::new();
    let core = client.get("/api").await?;
    for v in core["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        versions.push((String::new(), v.as_str().unwrap_or_default().to_owned()));
    }
    let groups = client.get("/apis").await?;
    for g in groups["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let preferred = str_at(g, "/preferredVersion/groupVersion");
        let gv = if preferred.is_empty() {
            str_at(g, "/versions/0/groupVersion")
        } else {
            preferred
        };
        versions.push((str_at(g, "/name").to_owned(), gv.to_owned()));
    }
    let mut rows = Vec::new();
    for (group, gv) in versions {
        if args.api_group.as_ref().is_some_and(|g| *g != group) {
            continue;
        }
        let path = if group.is_empty() {
            format!("/api/{gv}")
        } else {
            format!("/apis/{gv}")
        };
        let list = client.get(&path).await?;
        let mut resources: Vec<Value> = list["resources"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|r| !str_at(r, "/name").contains('/'))
            .filter(|r| {
                args.namespaced
                    .is_none_or(|n| r["namespaced"].as_bool() == Some(n))
            })
            .cloned()
            .collect();
        resources.sort_by(|a, b| str_at(a, "/name").cmp(str_at(b, "/name")));
        rows.extend(resources.into_iter().map(|resource| Row {
            group: group.clone(),
            api_version: gv.clone(),
            resource,
        }));
    }
    let wide = args.output.as_deref() == Some("wide");
    if args.output.as_deref() == Some("name") {
        let names: String = rows
            .iter()
            .map(|r| {
                let name = str_at(&r.resource, "/name");
                if r.group.is_empty() {
                    format!("{name}\n")
                } else {
                    format!("{name}.{}\n", r.group)
                }
            })
            .collect();
        print(&names);
        return Ok(());
    }
    let mut lines = Vec::new();
    if !args.no_headers {
        let mut header: Vec<String> = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
            .map(String::from)
            .to_vec();
        if wide {
            header.extend(["VERBS".into(), "CATEGORIES".into()]);
        }
        lines.push(header);
    }
    let joined = |v: &Value, sep: &str| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(sep)
            })
            .unwrap_or_default()
    };
    for r in &rows {
        let mut line = vec![
            str_at(&r.resource, "/name").to_owned(),
            joined(&r.resource["shortNames"], ","),
            r.api_version.clone(),
            r.resource["namespaced"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
            str_at(&r.resource, "/kind").to_owned(),
        ];
        if wide {
            line.push(format!("[{}]", joined(&r.resource["verbs"], " ")));
            line.push(joined(&r.resource["categories"], ","));
        }
        lines.push(line);
    }
    print(&table(&lines));
    Ok(())
}
