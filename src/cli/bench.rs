//! `wk bench`: benchmarks whose figures go into BENCHMARKS.md.

use anyhow::Context;

use crate::bench;

/// Flags of `wk bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Pod creates (sequential and concurrent), watch delivery latency, list time and server
    /// memory, against a fresh `wk server` over HTTPS.
    Api {
        /// Pods created one at a time.
        #[arg(long, default_value_t = 1000)]
        sequential: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Pods in all.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Watchers during the latency phase.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a benchmark and prints its report.
///
/// # Errors
/// When the benchmark fails.
pub async fn execute(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Api {
            sequential,
            clients,
            pods,
            watchers,
            json,
        } => {
            let wk = std::env::current_exe().context("finding the wk binary")?;
            let opts = bench::Options {
                sequential,
                clients,
                total_pods: pods,
                watchers,
                ..bench::Options::default()
            };
            let r = bench::api(&wk, &opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let row = |name: &str, l: &bench::Latencies| {
                println!(
                    "{name:<34} {:>10.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    l.per_second, l.p50_ms, l.p99_ms
                )
            };
            row("creates, sequential", &r.create_sequential);
            row(&format!("creates, {clients} clients"), &r.create_concurrent);
            row(
                &format!("watch delivery, {watchers} watchers"),
                &r.watch_delivery,
            );
            println!(
                "{:<34} {:>10.1} ms ({} pods)",
                "list all pods", r.list_ms, r.listed
            );
            println!("{:<34} {:>10.1} MB", "server RSS, idle", r.idle_rss_mb);
            println!(
                "{:<34} {:>10.1} MB (end {:.1} MB)",
                "server peak RSS, holding all pods", r.peak_rss_mb, r.end_rss_mb
            );
            println!(
                "{:<34} {:>10.0}/s",
                "plain fsync, one writer (peer)", r.fsync_per_second
            );
            Ok(())
        }
    }
}
