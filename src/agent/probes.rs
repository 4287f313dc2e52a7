//! Liveness, readiness and startup probes: httpGet and tcpSocket connect inside the pod's
//! network namespace; exec runs the container's module again with the probe's command, in a
//! fresh instance that shares the pod's mounts and network.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::logs::{ContainerLog, Streams};
use super::shim::Runnable;
use super::wasm::{self, Exit, GuestSpec, Loaded, Stop};

/// A probe's timing, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Wait this long after the container starts.
    pub initial_delay: Duration,
    /// Probe this often.
    pub period: Duration,
    /// Give up on one probe after this long.
    pub timeout: Duration,
    /// Consecutive successes to count as healthy.
    pub success_threshold: u32,
    /// Consecutive failures to count as unhealthy.
    pub failure_threshold: u32,
}

impl Timing {
    /// Reads the timing fields of a probe.
    pub fn of(probe: &Value) -> Self {
        let secs = |k: &str, d: u64| Duration::from_secs(probe[k].as_u64().unwrap_or(d));
        let n = |k: &str, d: u64| probe[k].as_u64().unwrap_or(d).max(1) as u32;
        Self {
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: n("successThreshold", 1),
            failure_threshold: n("failureThreshold", 3),
        }
    }
}

/// Counts consecutive results against the thresholds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracker {
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// Records one result; returns `Some(true)` when the probe became healthy, `Some(false)`
    /// when it became unhealthy, `None` when nothing changed yet.
    pub fn record(&mut self, ok: bool, timing: &Timing) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes == timing.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures == timing.failure_threshold).then_some(false)
        }
    }
}

/// What a probe needs to run an exec check.
pub struct ExecTarget {
    /// What the container runs.
    pub loaded: Runnable,
    /// The engine.
    pub engine: wasmtime::Engine,
    /// The container's guest spec (its mounts, env and limits).
    pub guest: GuestSpec,
}

/// Runs one check. `handle` is the pod thread's runtime, so sockets open in its namespace.
/// Returns an error message on failure.
pub async fn check(
    probe: &Value,
    ports: &[(String, u16)],
    handle: &tokio::runtime::Handle,
    exec: &ExecTarget,
) -> Result<(), String> {
    let timeout = Timing::of(probe).timeout;
    if let Some(h) = probe.get("httpGet") {
        let port = port_of(&h["port"], ports)?;
        let path = h["path"].as_str().unwrap_or("/").to_owned();
        let headers: Vec<(String, String)> = h["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                (
                    x["name"].as_str().unwrap_or_default().to_owned(),
                    x["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let run = handle.spawn(async move { http_get(port, &path, &headers).await });
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "Get \"http://127.0.0.1:{port}\": context deadline exceeded"
            )),
        };
    }
    if let Some(t) = probe.get("tcpSocket") {
        let port = port_of(&t["port"], ports)?;
        let run =
            handle.spawn(async move { TcpStream::connect(("127.0.0.1", port)).await.map(drop) });
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("dial tcp 127.0.0.1:{port}: {e}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("dial tcp 127.0.0.1:{port}: i/o timeout")),
        };
    }
    if let Some(e) = probe.get("exec") {
        let argv: Vec<String> = e["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        if argv.is_empty() {
            return Err("exec probe has no command".into());
        }
        let loaded = match &exec.loaded {
            Runnable::Linux(linux) => return linux.exec(&argv, timeout).await,
            Runnable::Wasm(Loaded::Http(_)) => {
                return Err(
                    "exec probes need a command module; this container is an HTTP component".into(),
                );
            }
            Runnable::Wasm(loaded) => loaded.clone(),
        };
        let mut guest = exec.guest.clone();
        guest.argv = argv;
        // The probe's output goes nowhere: a throw-away log in a temp file.
        let sink = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let log = ContainerLog::create(sink.path().to_owned()).map_err(|e| e.to_string())?;
        let (out, err) = (log.stream("stdout"), log.stream("stderr"));
        let (engine, stop) = (exec.engine.clone(), Stop::default());
        let stop2 = stop.clone();
        let run = handle.spawn(async move {
            wasm::run_command(&loaded, &engine, &guest, &out, &err, &stop2).await
        });
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(Exit::Code(0))) => Ok(()),
            Ok(Ok(exit)) => Err(format!(
                "command exited with {} ({})",
                exit.code(),
                exit.reason()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                stop.stop();
                Err(format!("command timed out after {}s", timeout.as_secs()))
            }
        };
    }
    Err("the probe has no handler (httpGet, tcpSocket or exec)".into())
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(v: &Value, ports: &[(String, u16)]) -> Result<u16, String> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).map_err(|_| format!("port {n} is out of range"));
    }
    let name = v.as_str().unwrap_or_default();
    ports
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("the container has no port named {name:?}"))
}

/// A plain HTTP/1.1 GET; 200–399 is a success, as the kubelet counts it.
async fn http_get(port: u16, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp 127.0.0.1:{port}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timing_defaults_follow_kubernetes() {
        let t = Timing::of(&json!({}));
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let t = Timing::of(&json!({"failureThreshold": 2, "successThreshold": 2}));
        let mut tr = Tracker::default();
        assert_eq!(tr.record(false, &t), None);
        assert_eq!(tr.record(true, &t), None, "a success resets the failures");
        assert_eq!(tr.record(false, &t), None);
        assert_eq!(tr.record(false, &t), Some(false));
        assert_eq!(tr.record(true, &t), None);
        assert_eq!(tr.record(true, &t), Some(true));
    }

    #[test]
    fn named_ports_resolve_against_the_container() {
        let ports = vec![("http".to_owned(), 8000)];
        assert_eq!(port_of(&json!("http"), &ports), Ok(8000));
        assert_eq!(port_of(&json!(9000), &ports), Ok(9000));
        assert!(port_of(&json!("grpc"), &ports).is_err());
    }
}
