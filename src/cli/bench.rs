//! `wk bench`: benchmarks whose figures go into BENCHMARKS.md.

use std::path::PathBuf;

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
    /// Pod start latency (bound to Running, to the first 200 OK) against `runc run`, density
    /// of idle HTTP pods, and a standalone agent's idle memory.
    Pods {
        /// The wasi:http component the pods run.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// Pods started one at a time for the latency figures.
        #[arg(long, default_value_t = 50)]
        starts: usize,
        /// Idle HTTP pods for the density figure.
        #[arg(long, default_value_t = 1000)]
        density: usize,
        /// `runc run` samples.
        #[arg(long, default_value_t = 20)]
        runc_runs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull and first start of a component from a local registry (docker-registry), cold and
    /// warm, against `skopeo copy`; a precompiled start against compiling on each start.
    Images {
        /// The wasi:http component, padded to --size.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// The component's size in bytes.
        #[arg(long, default_value_t = 2 << 20)]
        size: usize,
        /// Samples per figure.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scheduler throughput: pods bound per second with hollow nodes (Node objects whose
    /// Leases a simulator renews) and a backlog of pending pods.
    Scheduler {
        /// Hollow nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pending pods to bind.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Measure the server's own scheduler (reading its watch cache) instead of one in the
        /// benchmark's process.
        #[arg(long)]
        in_server: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A Deployment made fully Available across real agents (against the same pods created
    /// bound to their nodes), and the time until the pods of a killed agent are Ready elsewhere.
    Cluster {
        /// The wasi:http component the pods run.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// Agents (`wk agent` processes).
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Replicas of the Deployment.
        #[arg(long, default_value_t = 100)]
        replicas: usize,
        /// Runs, each on a fresh cluster.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The server's --node-monitor-grace-period.
        #[arg(long, default_value = "20s", value_parser = super::agent::parse_duration)]
        grace: std::time::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the service proxy costs: one HTTP pod with wrk at its pod IP, through its
    /// ClusterIP and through a NodePort, in alternating runs, on a node that hands such
    /// connections to the pod's server and on one that relays them; then, as many times, how
    /// long after a new pod is Ready its Service sends it traffic.
    Proxy {
        /// The wasi:http component.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// Alternating runs of each path.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections wrk keeps open.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Linux container start through the container shim (runc) against a Wasm pod start on
    /// the same node, alternating, bound to Running.
    Shim {
        /// The wasi:http component the Wasm pods run.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// Starts of each kind.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A JS component (examples/hello-js) on wk, fresh and reused instances, against native
    /// Node and `wasmtime serve`, with wrk at several connection counts; and its cold start.
    Js {
        /// The component `npm run build` made (StarlingMonkey's fetch event).
        #[arg(long, default_value = "examples/hello-js/hello.wasm")]
        component: PathBuf,
        /// The component `npm run build:reusable` made, for the pods that reuse instances.
        #[arg(long, default_value = "examples/hello-js/hello-reusable.wasm")]
        reusable: PathBuf,
        /// The Node program it was built from.
        #[arg(long, default_value = "examples/hello-js/hello.js")]
        program: PathBuf,
        /// The wasmtime CLI to compare with (48.0.8).
        #[arg(long, default_value = "wasmtime")]
        wasmtime: PathBuf,
        /// Alternating runs of each setup.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Connection counts, comma-separated.
        #[arg(long, default_value = "1,32,256", value_delimiter = ',')]
        connections: Vec<usize>,
        /// Requests per instance in the reusing pod.
        #[arg(long, default_value_t = 1000)]
        reuse: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// HTTP throughput of one pod against `wasmtime serve` on the same component, with wrk.
    Serve {
        /// The wasi:http component.
        #[arg(
            long,
            default_value = "target/guests/wasm32-wasip2/release/http_hello.wasm"
        )]
        wasm: PathBuf,
        /// The wasmtime CLI to compare with (48.0.8).
        #[arg(long, default_value = "wasmtime")]
        wasmtime: PathBuf,
        /// Alternating runs of each.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
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
    super::init_logging();
    let wk = std::env::current_exe().context("finding the wk binary")?;
    match args.command {
        Command::Pods {
            wasm,
            starts,
            density,
            runc_runs,
            json,
        } => {
            let r = bench::pods::pods(&wk, &wasm, starts, density, runc_runs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let row = |name: &str, l: &bench::Latencies| {
                println!(
                    "{name:<40} p50 {:>8.2} ms  p99 {:>8.2} ms",
                    l.p50_ms, l.p99_ms
                )
            };
            row("wk: bound to Running", &r.to_running);
            row("wk: bound to first 200 OK", &r.to_first_ok);
            row("runc run -d busybox (peer)", &r.runc_start);
            println!(
                "{:<40} {:>8.1}x",
                "runc p50 / wk p50 to Running", r.speedup_p50
            );
            println!(
                "{:<40} {:>8.1} s for {} pods (pod network: {})",
                "density: all Running", r.density_seconds, r.density_pods, r.density_network
            );
            println!(
                "{:<40} {:>8.1} KB ({:.1} MB -> {:.1} MB)",
                "density: RSS per idle pod", r.rss_per_pod_kb, r.rss_before_mb, r.rss_after_mb
            );
            println!(
                "{:<40} {:>8.1} KB",
                "density: anonymous RSS per idle pod", r.anon_per_pod_kb
            );
            println!(
                "{:<40} {:>8.1} MB ({:.1} MB anonymous)",
                "wk agent idle RSS (30 s)", r.agent_idle_rss_mb, r.agent_idle_anon_mb
            );
            Ok(())
        }
        Command::Images {
            wasm,
            size,
            runs,
            json,
        } => {
            let r = bench::images::images(&wk, &wasm, size, runs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let row = |name: &str, l: &bench::Latencies| {
                println!(
                    "{name:<46} p50 {:>9.2} ms  p99 {:>9.2} ms",
                    l.p50_ms, l.p99_ms
                )
            };
            println!("component: {} bytes", r.component_bytes);
            row("pod start, cold (pull+verify+compile+start)", &r.cold_start);
            row("pod start, pulled before (IfNotPresent)", &r.warm_start);
            row("pod start, pulled before (Always)", &r.always_start);
            row(
                "pod start, imported (no registry; baseline)",
                &r.imported_start,
            );
            println!(
                "{:<46} {:>9.2} ms",
                "warm start adds (p50, vs imported)", r.warm_added_ms
            );
            println!(
                "{:<46} {:>9.1} us",
                "resolving a pulled image (p50)", r.ensure_warm_us
            );
            row("wk pull (in process, into an empty store)", &r.pull);
            row("skopeo copy docker:// -> oci: (peer)", &r.skopeo_pull);
            row("load by compiling", &r.compile);
            row("load precompiled", &r.precompiled);
            println!(
                "{:<46} {:>9.1}x",
                "compile / precompiled (p50)", r.precompiled_speedup
            );
            Ok(())
        }
        Command::Scheduler {
            nodes,
            pods,
            in_server,
            json,
        } => {
            let r = bench::scheduler::scheduler(&wk, nodes, pods, in_server).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{} pods on {} hollow nodes: bound in {:.2} s, {:.0} pods/s (busiest node {} of {} pods)",
                r.pods, r.nodes, r.seconds, r.bound_per_second, r.busiest_node.0, r.busiest_node.1
            );
            Ok(())
        }
        Command::Cluster {
            wasm,
            agents,
            replicas,
            runs,
            grace,
            json,
        } => {
            let r = bench::cluster::cluster(&wk, &wasm, agents, replicas, runs, grace).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{} replicas on {} agents (medians of {} runs): Deployment Available {:.2} s; the same pods bound to nodes Running {:.2} s (peer); failover after kill -9 {:.1} s (grace {} s)",
                r.replicas,
                r.agents,
                r.runs.len(),
                r.deployment_available_s,
                r.bound_pods_running_s,
                r.failover_s,
                r.grace_s
            );
            Ok(())
        }
        Command::Js {
            component,
            reusable,
            program,
            wasmtime,
            runs,
            seconds,
            connections,
            reuse,
            json,
        } => {
            let opts = bench::js::JsOptions {
                component: &component,
                reusable: &reusable,
                program: &program,
                wasmtime: &wasmtime,
                runs,
                secs: seconds,
                connections,
                reuse,
            };
            let r = bench::js::js(&wk, &opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "cold start (pod created to first 200 OK): {:.1} s compiling, {:.2} s cached",
                r.cold_start_s, r.cached_start_s
            );
            let rps = bench::js::rps;
            for row in &r.rows {
                println!(
                    "{} connections (median req/s of {runs} runs; p99 ms of the median run):",
                    row.connections
                );
                for setup in &row.setups {
                    let (name, runs) = (&setup.name, &setup.runs);
                    let peer = rps(&row.setups[setup.peer].runs).max(1e-9);
                    let median = rps(runs);
                    let p99 = runs
                        .iter()
                        .min_by(|a, b| {
                            (a.requests_per_second - median)
                                .abs()
                                .total_cmp(&(b.requests_per_second - median).abs())
                        })
                        .map_or(0.0, |w| w.p99_ms);
                    println!(
                        "  {name:<44} {median:>9.0} req/s  p99 {p99:>7.2} ms  x{:.2} {}",
                        median / peer,
                        row.setups[setup.peer].name
                    );
                }
            }
            Ok(())
        }
        Command::Serve {
            wasm,
            wasmtime,
            runs,
            seconds,
            json,
        } => {
            let r = bench::pods::serve(&wk, &wasm, &wasmtime, runs, seconds).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for (i, (a, b)) in r.wk.iter().zip(&r.wasmtime_serve).enumerate() {
                println!(
                    "run {}: wk {:>9.0} req/s (p50 {:.2} ms, p99 {:.2} ms)   wasmtime serve {:>9.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
                    i + 1,
                    a.requests_per_second,
                    a.p50_ms,
                    a.p99_ms,
                    b.requests_per_second,
                    b.p50_ms,
                    b.p99_ms
                );
            }
            println!("median wk / median wasmtime serve: {:.2}", r.ratio);
            Ok(())
        }
        Command::Shim { wasm, runs, json } => {
            let r = bench::shim::shim(&wk, &wasm, runs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for (name, l) in [("Wasm pod", &r.wasm), ("Linux pod (runc)", &r.linux)] {
                println!(
                    "{name:<18} bound to Running  p50 {:>8.2} ms  p99 {:>8.2} ms",
                    l.p50_ms, l.p99_ms
                );
            }
            println!(
                "{:<18} create + start    p50 {:>8.2} ms  p99 {:>8.2} ms",
                "runc run -d alone", r.runc_alone.p50_ms, r.runc_alone.p99_ms
            );
            println!(
                "first of each (compile / unpack): Wasm {:.1} ms, Linux {:.1} ms",
                r.wasm_first_ms, r.linux_first_ms
            );
            println!("Linux p50 / Wasm p50: {:.2}", r.ratio_p50);
            Ok(())
        }
        Command::Proxy {
            wasm,
            runs,
            seconds,
            connections,
            json,
        } => {
            let r = bench::proxy::proxy(&wk, &wasm, runs, seconds, connections).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for (node, runs) in [("handoff", &r.handoff), ("relay", &r.relay)] {
                let each = runs
                    .pod_ip
                    .iter()
                    .zip(&runs.cluster_ip)
                    .zip(&runs.node_port);
                for (i, ((pod, vip), port)) in each.enumerate() {
                    for (name, w) in [("pod IP", pod), ("ClusterIP", vip), ("NodePort", port)] {
                        println!(
                            "{node:<7} run {}: {name:<10} {:>9.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
                            i + 1,
                            w.requests_per_second,
                            w.p50_ms,
                            w.p99_ms
                        );
                    }
                }
                println!(
                    "{node:<7} median ClusterIP / pod IP: {:.2}   median NodePort / pod IP: {:.2}   ({} connections)",
                    runs.cluster_ip_ratio, runs.node_port_ratio, r.connections
                );
            }
            let each: Vec<String> = r
                .ready_to_traffic_ms
                .iter()
                .map(|ms| format!("{ms:.0}"))
                .collect();
            println!(
                "pod Ready to traffic through its ClusterIP: median {:.0} ms (runs: {} ms)",
                r.ready_to_traffic_median_ms,
                each.join(", ")
            );
            Ok(())
        }
        Command::Api {
            sequential,
            clients,
            pods,
            watchers,
            json,
        } => {
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
                    "{name:<36} {:>10.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
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
