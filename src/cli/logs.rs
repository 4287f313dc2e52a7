//! `wk logs`: print (or follow) a container's logs, as `kubectl logs` does.

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::Global;
use super::output::parse_duration;
use super::target::with_query;

/// Flags of `wk logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (or `pod/NAME`).
    pod: String,
    /// The container; needed when the pod has more than one.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The previous (terminated) run of the container.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// Only lines newer than a duration, e.g. 5s, 2m.
    #[arg(long)]
    since: Option<String>,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
    /// Stop after this many bytes.
    #[arg(long)]
    limit_bytes: Option<u64>,
}

/// Runs `wk logs`.
///
/// # Errors
/// When the pod or container does not exist, or the server cannot read the log.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let session = global.connect()?;
    let name = args
        .pod
        .strip_prefix("pod/")
        .or_else(|| args.pod.strip_prefix("pods/"))
        .unwrap_or(&args.pod);
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(c) = &args.container {
        query.push(("container", c.clone()));
    }
    if args.follow {
        query.push(("follow", "true".into()));
    }
    if args.previous {
        query.push(("previous", "true".into()));
    }
    if args.tail >= 0 {
        query.push(("tailLines", args.tail.to_string()));
    }
    if let Some(s) = &args.since {
        query.push((
            "sinceSeconds",
            parse_duration(s)?.as_secs().max(1).to_string(),
        ));
    }
    if args.timestamps {
        query.push(("timestamps", "true".into()));
    }
    if let Some(n) = args.limit_bytes {
        query.push(("limitBytes", n.to_string()));
    }
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let path = with_query(
        &format!("/api/v1/namespaces/{}/pods/{name}/log", session.namespace),
        &pairs,
    );
    let mut body = session.client.stream(&path, Some("text/plain")).await?;
    let mut out = tokio::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data).await?;
            out.flush().await?;
        }
    }
    Ok(())
}
