//! `wk top`: CPU and memory of nodes and pods, from `metrics.k8s.io`, as `kubectl top` shows.

use super::Global;
use super::output::tabwrite;
use crate::api::quantity::Quantity;

/// Flags of `wk top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Usage of nodes.
    #[command(alias = "nodes", alias = "no")]
    Node {
        /// One node.
        name: Option<String>,
    },
    /// Usage of pods.
    #[command(alias = "pods", alias = "po")]
    Pod {
        /// One pod.
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// One row per container.
        #[arg(long)]
        containers: bool,
    },
}

fn cpu(q: &serde_json::Value) -> Quantity {
    q.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .unwrap_or_default()
}

fn cpu_text(q: Quantity) -> String {
    format!("{}m", q.millis().max(0))
}

fn memory_text(q: Quantity) -> String {
    format!("{}Mi", q.value() / (1 << 20))
}

/// Runs `wk top`.
///
/// # Errors
/// When the metrics API cannot be read.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let session = global.connect()?;
    let base = format!(
        "/apis/{}/{}",
        crate::api::metrics::GROUP,
        crate::api::metrics::VERSION
    );
    let mut rows: Vec<Vec<String>> = Vec::new();
    match args.what {
        What::Node { name } => {
            let list = session.client.get(&format!("{base}/nodes")).await?;
            let nodes = session.client.get("/api/v1/nodes").await?;
            rows.push(
                ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
                    .map(String::from)
                    .to_vec(),
            );
            for item in list["items"].as_array().into_iter().flatten() {
                let n = item["metadata"]["name"].as_str().unwrap_or_default();
                if name.as_deref().is_some_and(|want| want != n) {
                    continue;
                }
                let node = nodes["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["metadata"]["name"] == n);
                let alloc = |r: &str| {
                    node.map(|x| cpu(&x["status"]["allocatable"][r]))
                        .unwrap_or_default()
                };
                let (c, m) = (cpu(&item["usage"]["cpu"]), cpu(&item["usage"]["memory"]));
                let pct = |used: Quantity, total: Quantity| {
                    if total.millis() > 0 {
                        format!("{}%", used.millis() * 100 / total.millis())
                    } else {
                        "<unknown>".into()
                    }
                };
                rows.push(vec![
                    n.to_owned(),
                    cpu_text(c),
                    pct(c, alloc("cpu")),
                    memory_text(m),
                    pct(m, alloc("memory")),
                ]);
            }
        }
        What::Pod {
            name,
            all_namespaces,
            containers,
        } => {
            let path = if all_namespaces {
                format!("{base}/pods")
            } else {
                format!("{base}/namespaces/{}/pods", session.namespace)
            };
            let list = session.client.get(&path).await?;
            let mut header = vec!["NAME".to_owned()];
            if all_namespaces {
                header.insert(0, "NAMESPACE".into());
            }
            if containers {
                header.push("CONTAINER".into());
            }
            header.extend(["CPU(cores)".into(), "MEMORY(bytes)".into()]);
            rows.push(header);
            for item in list["items"].as_array().into_iter().flatten() {
                let pod = item["metadata"]["name"].as_str().unwrap_or_default();
                if name.as_deref().is_some_and(|want| want != pod) {
                    continue;
                }
                let mut lead = vec![pod.to_owned()];
                if all_namespaces {
                    lead.insert(
                        0,
                        item["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                let cs: Vec<&serde_json::Value> = item["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .collect();
                if containers {
                    for c in cs {
                        let mut row = lead.clone();
                        row.push(c["name"].as_str().unwrap_or_default().to_owned());
                        row.push(cpu_text(cpu(&c["usage"]["cpu"])));
                        row.push(memory_text(cpu(&c["usage"]["memory"])));
                        rows.push(row);
                    }
                } else {
                    let c: Quantity = cs.iter().map(|c| cpu(&c["usage"]["cpu"])).sum();
                    let m: Quantity = cs.iter().map(|c| cpu(&c["usage"]["memory"])).sum();
                    lead.extend([cpu_text(c), memory_text(m)]);
                    rows.push(lead);
                }
            }
            if rows.len() == 1 && name.is_some() {
                anyhow::bail!("pod metrics for {} not found", name.unwrap_or_default());
            }
        }
    }
    let text: String = rows.iter().map(|r| r.join("\t") + "\n").collect();
    print!("{}", tabwrite(&text, 0, 3));
    Ok(())
}
