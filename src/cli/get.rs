//! `wk get`: server-side Tables for people, YAML, JSON, names, JSONPath or custom columns for
//! scripts, and `-w` to keep printing changes as they come.

use anyhow::bail;
use http::Method;
use serde_json::{Value, json};

use super::jsonpath::Template;
use super::output::{self, TableStyle, print, println, to_json, to_yaml};
use super::target::{
    Selection, collection_path, kind_ref, object_path, object_ref, scope, selections, with_query,
};
use super::{Global, Reported, Session, report, str_at};
use crate::api::resources::ResourceInfo;
use crate::client;

/// What kubectl asks for when it wants a server-side Table.
pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// Flags of `wk get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`.
    #[arg(value_name = "TYPE[.GROUP] [NAME]", required = true)]
    args: Vec<String>,
    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=SPEC.
    #[arg(short = 'o', long, value_name = "FORMAT")]
    output: Option<String>,
    /// Label selector to filter on (`app=web`, `tier in (a,b)`, `!x`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector to filter on (`metadata.name=x`, `spec.nodeName=n1`).
    #[arg(long)]
    field_selector: Option<String>,
    /// List objects across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// After listing, watch for changes and print them.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Watch for changes without listing first.
    #[arg(long)]
    watch_only: bool,
    /// With --watch, add an EVENT column (ADDED, MODIFIED, DELETED).
    #[arg(long)]
    output_watch_events: bool,
    /// Add a LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// Leave out the header row.
    #[arg(long)]
    no_headers: bool,
    /// Objects per list request; 0 lists everything at once.
    #[arg(long, default_value_t = 500)]
    chunk_size: u32,
}

/// How results are printed.
#[derive(Debug)]
enum Format {
    Table { wide: bool },
    Yaml,
    Json,
    Name,
    JsonPath(Template),
    Columns(Vec<(String, Template)>),
}

impl Format {
    fn parse(output: Option<&str>) -> anyhow::Result<Self> {
        let Some(output) = output else {
            return Ok(Self::Table { wide: false });
        };
        let (name, arg) = output.split_once('=').unwrap_or((output, ""));
        Ok(match name {
            "wide" => Self::Table { wide: true },
            "yaml" => Self::Yaml,
            "json" => Self::Json,
            "name" => Self::Name,
            "jsonpath" | "jsonpath-as-text" if !arg.is_empty() => Self::JsonPath(
                Template::parse(arg)
                    .map_err(|e| anyhow::anyhow!("error parsing jsonpath {arg}, {e}"))?,
            ),
            "custom-columns" if !arg.is_empty() => {
                let mut columns = Vec::new();
                for spec in arg.split(',') {
                    let Some((header, path)) = spec.split_once(':') else {
                        bail!(
                            "unexpected custom-columns spec: {spec}, expected <header>:<json-path-expr>"
                        );
                    };
                    let path = if path.starts_with('{') {
                        path.to_owned()
                    } else {
                        format!("{{{path}}}")
                    };
                    columns.push((header.to_owned(), Template::parse(&path)?));
                }
                Self::Columns(columns)
            }
            _ => bail!(
                "unable to match a printer suitable for the output format \"{output}\", allowed formats are: custom-columns,json,jsonpath,name,wide,yaml"
            ),
        })
    }

    fn is_table(&self) -> bool {
        matches!(self, Self::Table { .. })
    }
}

/// What one type contributed: a Table or a list of objects, and the list's resourceVersion.
struct Fetched {
    res: &'static ResourceInfo,
    definitions: Vec<Value>,
    rows: Vec<Value>,
    items: Vec<Value>,
    resource_version: String,
    listed: bool,
}

/// Runs `wk get`.
///
/// # Errors
/// On bad arguments or a failed request; objects that were found are printed first.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let format = Format::parse(args.output.as_deref())?;
    let selections = selections(&args.args)?;
    let session = global.connect()?;
    if args.watch || args.watch_only {
        let [selection] = selections.as_slice() else {
            bail!("you may only specify a single resource type");
        };
        return watch(&session, &args, &format, selection).await;
    }
    let mut fetched = Vec::new();
    let mut errors = Vec::new();
    for selection in &selections {
        fetched.push(
            fetch(
                &session,
                &ListOptions::from(&args),
                format.is_table(),
                selection,
                &mut errors,
            )
            .await?,
        );
    }
    let single = selections.len() == 1 && selections[0].names.len() == 1;
    print_fetched(
        &session,
        &args,
        &format,
        &fetched,
        single,
        selections.len() > 1,
    )?;
    if errors.is_empty() {
        return Ok(());
    }
    for e in errors {
        report(&e.into());
    }
    Err(Reported.into())
}

fn namespace_of<'a>(session: &'a Session, args: &Args, res: &ResourceInfo) -> Option<&'a str> {
    if args.all_namespaces {
        None
    } else {
        scope(res, &session.namespace)
    }
}

/// Which objects a list asks for.
struct ListOptions<'a> {
    all_namespaces: bool,
    selector: &'a str,
    field_selector: &'a str,
    chunk_size: u32,
}

impl<'a> ListOptions<'a> {
    fn from(args: &'a Args) -> Self {
        Self {
            all_namespaces: args.all_namespaces,
            selector: args.selector.as_deref().unwrap_or_default(),
            field_selector: args.field_selector.as_deref().unwrap_or_default(),
            chunk_size: args.chunk_size,
        }
    }
}

async fn fetch(
    session: &Session,
    opts: &ListOptions<'_>,
    table: bool,
    selection: &Selection,
    errors: &mut Vec<client::Error>,
) -> anyhow::Result<Fetched> {
    let res = selection.res;
    let ns = if opts.all_namespaces {
        None
    } else {
        scope(res, &session.namespace)
    };
    let accept = if table {
        TABLE_ACCEPT
    } else {
        "application/json"
    };
    let mut out = Fetched {
        res,
        definitions: Vec::new(),
        rows: Vec::new(),
        items: Vec::new(),
        resource_version: String::new(),
        listed: false,
    };
    if selection.names.is_empty() {
        out.listed = true;
        let mut token = String::new();
        loop {
            let limit = if opts.chunk_size > 0 {
                opts.chunk_size.to_string()
            } else {
                String::new()
            };
            let url = with_query(
                &collection_path(res, ns),
                &[
                    ("labelSelector", opts.selector),
                    ("fieldSelector", opts.field_selector),
                    ("limit", &limit),
                    ("continue", &token),
                ],
            );
            let page = session
                .client
                .request_accept(Method::GET, &url, None, Some(accept), None)
                .await?;
            out.resource_version = str_at(&page, "/metadata/resourceVersion").to_owned();
            token = str_at(&page, "/metadata/continue").to_owned();
            absorb(&mut out, page, table);
            if token.is_empty() {
                break;
            }
        }
    } else {
        for name in &selection.names {
            match session
                .client
                .request_accept(
                    Method::GET,
                    &object_path(res, ns, name),
                    None,
                    Some(accept),
                    None,
                )
                .await
            {
                Ok(object) => absorb(&mut out, object, table),
                Err(e) => errors.push(e),
            }
        }
    }
    Ok(out)
}

fn absorb(out: &mut Fetched, answer: Value, table: bool) {
    if table {
        let t = as_table(answer, out.res);
        if out.definitions.is_empty() {
            out.definitions = t["columnDefinitions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
        }
        out.rows
            .extend(t["rows"].as_array().cloned().unwrap_or_default());
    } else if let Some(items) = answer
        .get("items")
        .and_then(Value::as_array)
        .filter(|_| answer["kind"].as_str().is_some_and(|k| k.ends_with("List")))
    {
        out.items
            .extend(items.iter().map(|item| typed(item.clone(), out.res)));
    } else {
        out.items.push(typed(answer, out.res));
    }
}

/// A list item with its `apiVersion` and `kind`, which lists leave out.
fn typed(mut item: Value, res: &ResourceInfo) -> Value {
    if let Some(map) = item.as_object_mut()
        && !map.contains_key("kind")
    {
        let mut with = serde_json::Map::new();
        with.insert("apiVersion".into(), Value::String(res.api_version()));
        with.insert("kind".into(), Value::String(res.kind.to_owned()));
        with.extend(std::mem::take(map));
        *map = with;
    }
    item
}

/// The answer as a Table; a plain object or list becomes a `NAME AGE` table, as kubectl does.
fn as_table(answer: Value, res: &ResourceInfo) -> Value {
    if answer["kind"] == "Table" {
        return answer;
    }
    let items = match answer.get("items").and_then(Value::as_array) {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    let rows: Vec<Value> = items
        .into_iter()
        .map(|item| {
            let item = typed(item, res);
            json!({"cells": [item["metadata"]["name"].clone(), output::age(&item["metadata"]["creationTimestamp"])], "object": item})
        })
        .collect();
    json!({"kind": "Table", "columnDefinitions": [
        {"name": "Name", "type": "string", "priority": 0}, {"name": "Age", "type": "string", "priority": 0}], "rows": rows})
}

fn print_fetched(
    session: &Session,
    args: &Args,
    format: &Format,
    fetched: &[Fetched],
    single: bool,
    several: bool,
) -> anyhow::Result<()> {
    match format {
        Format::Table { wide } => {
            let mut blocks = Vec::new();
            for f in fetched.iter().filter(|f| !f.rows.is_empty()) {
                let style = style(args, f.res, *wide, several.then(|| kind_ref(f.res)));
                let mut rows = Vec::new();
                if !args.no_headers {
                    rows.push(style.header(&f.definitions));
                }
                rows.extend(f.rows.iter().map(|r| style.row(&f.definitions, r, None)));
                blocks.push(output::table(&rows));
            }
            if blocks.is_empty() {
                if fetched.iter().any(|f| f.listed) {
                    eprintln!(
                        "{}",
                        no_resources(session, args, fetched.iter().all(|f| f.res.namespaced))
                    );
                }
                return Ok(());
            }
            print(&blocks.join("\n"));
        }
        Format::Name => {
            for f in fetched {
                for item in &f.items {
                    println(&object_ref(f.res, str_at(item, "/metadata/name")));
                }
            }
        }
        _ => {
            let items: Vec<Value> = fetched
                .iter()
                .flat_map(|f| f.items.iter().cloned())
                .collect();
            let value = if single && items.len() == 1 {
                items.into_iter().next().unwrap_or_default()
            } else {
                if items.is_empty()
                    && fetched.iter().any(|f| f.listed)
                    && matches!(format, Format::Columns(_))
                {
                    eprintln!(
                        "{}",
                        no_resources(session, args, fetched.iter().all(|f| f.res.namespaced))
                    );
                    return Ok(());
                }
                // kubectl keeps the list's resourceVersion for templates but prints "" in
                // YAML and JSON.
                let rv = if let ([f], Format::JsonPath(_)) = (fetched, format) {
                    f.resource_version.clone()
                } else {
                    String::new()
                };
                json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": rv}})
            };
            print_value(format, &value, args.no_headers)?;
        }
    }
    Ok(())
}

fn print_value(format: &Format, value: &Value, no_headers: bool) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print(&to_yaml(value)?),
        Format::Json => print(&to_json(value)?),
        Format::JsonPath(t) => print(&t.render(value)),
        Format::Columns(columns) => {
            let items = match value.get("items").and_then(Value::as_array) {
                Some(items) if value["kind"] == "List" => items.clone(),
                _ => vec![value.clone()],
            };
            let mut rows = Vec::new();
            if !no_headers {
                rows.push(columns.iter().map(|(h, _)| h.clone()).collect());
            }
            for item in &items {
                rows.push(
                    columns
                        .iter()
                        .map(|(_, t)| {
                            let text = t.render(item);
                            if text.is_empty() {
                                "<none>".to_owned()
                            } else {
                                text
                            }
                        })
                        .collect(),
                );
            }
            print(&output::table(&rows));
        }
        Format::Name | Format::Table { .. } => {}
    }
    Ok(())
}

fn style(args: &Args, res: &ResourceInfo, wide: bool, name_prefix: Option<String>) -> TableStyle {
    TableStyle {
        wide,
        namespace: args.all_namespaces && res.namespaced,
        labels: args.show_labels,
        events: args.output_watch_events,
        name_prefix,
    }
}

fn no_resources(session: &Session, args: &Args, namespaced: bool) -> String {
    if args.all_namespaces || !namespaced {
        "No resources found".to_owned()
    } else {
        format!("No resources found in {} namespace.", session.namespace)
    }
}

/// Lists (unless `--watch-only`), then prints each change from the list's resourceVersion on.
async fn watch(
    session: &Session,
    args: &Args,
    format: &Format,
    selection: &Selection,
) -> anyhow::Result<()> {
    let res = selection.res;
    let ns = namespace_of(session, args, res);
    let field_selector = match selection.names.as_slice() {
        [] => args.field_selector.clone().unwrap_or_default(),
        [name] => {
            let by_name = format!("metadata.name={name}");
            args.field_selector
                .as_ref()
                .map_or(by_name.clone(), |f| format!("{f},{by_name}"))
        }
        _ => bail!(
            "watch is only supported on individual resources and resource collections, but 2 resources were found"
        ),
    };
    let table = format.is_table();
    let wide = matches!(format, Format::Table { wide: true });
    let style = style(args, res, wide, None);
    let mut printer = WatchPrinter {
        widths: Vec::new(),
        header_done: args.no_headers,
        definitions: Vec::new(),
    };
    let mut resource_version = String::new();
    if !args.watch_only {
        let listing = Selection {
            res,
            names: Vec::new(),
        };
        let opts = ListOptions {
            field_selector: &field_selector,
            ..ListOptions::from(args)
        };
        let mut errors = Vec::new();
        let fetched = fetch(session, &opts, table, &listing, &mut errors).await?;
        resource_version = fetched.resource_version.clone();
        if table {
            printer.definitions = fetched.definitions.clone();
            if fetched.rows.is_empty() {
                eprintln!("{}", no_resources(session, args, res.namespaced));
            } else {
                let rows: Vec<Vec<String>> = fetched
                    .rows
                    .iter()
                    .map(|r| style.row(&printer.definitions, r, Some("ADDED")))
                    .collect();
                printer.print(&style, rows);
            }
        } else {
            for item in &fetched.items {
                print_event_object(format, res, item)?;
            }
        }
    }
    let url = with_query(
        &collection_path(res, ns),
        &[
            (
                "labelSelector",
                args.selector.as_deref().unwrap_or_default(),
            ),
            ("fieldSelector", &field_selector),
            ("resourceVersion", &resource_version),
            ("watch", "true"),
        ],
    );
    let accept = if table {
        TABLE_ACCEPT
    } else {
        "application/json"
    };
    let mut stream = session.client.watch(&url, Some(accept)).await?;
    while let Some(event) = stream.next().await? {
        {
            let kind = event["type"].as_str().unwrap_or_default();
            match kind {
                "BOOKMARK" => {}
                _ if table => {
                    let t = as_table(event["object"].clone(), res);
                    if let Some(defs) = t["columnDefinitions"].as_array().filter(|d| !d.is_empty())
                    {
                        printer.definitions = defs.clone();
                    }
                    let rows: Vec<Vec<String>> = t["rows"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|r| style.row(&printer.definitions, r, Some(kind)))
                        .collect();
                    printer.print(&style, rows);
                }
                _ => print_event_object(format, res, &typed(event["object"].clone(), res))?,
            }
        }
    }
    Ok(())
}

fn print_event_object(format: &Format, res: &ResourceInfo, object: &Value) -> anyhow::Result<()> {
    match format {
        Format::Name => println(&object_ref(res, str_at(object, "/metadata/name"))),
        Format::Yaml => print(&format!("---\n{}", to_yaml(object)?)),
        Format::JsonPath(t) => print(&t.render(object)),
        _ => print_value(format, object, true)?,
    }
    Ok(())
}

/// Prints watch rows in columns that only grow, as kubectl's tab writer remembers widths.
struct WatchPrinter {
    widths: Vec<usize>,
    header_done: bool,
    definitions: Vec<Value>,
}

impl WatchPrinter {
    fn print(&mut self, style: &TableStyle, mut rows: Vec<Vec<String>>) {
        if rows.is_empty() {
            return;
        }
        if !self.header_done {
            rows.insert(0, style.header(&self.definitions));
            self.header_done = true;
        }
        for row in &rows {
            for (j, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                let w = (cell.chars().count() + 3).max(6);
                if self.widths.len() <= j {
                    self.widths.push(w);
                } else {
                    self.widths[j] = self.widths[j].max(w);
                }
            }
        }
        let mut text = String::new();
        for row in rows {
            for (j, cell) in row.iter().enumerate() {
                text.push_str(cell);
                if j + 1 < row.len() {
                    text.extend(std::iter::repeat_n(
                        ' ',
                        self.widths[j].saturating_sub(cell.chars().count()),
                    ));
                }
            }
            text.push('\n');
        }
        print(&text);
    }
}
