//! Starts the real `wk server` on a free port in a temporary directory, and drives it with
//! the real kubectl and the `wk` client. The server is killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `wk` binary under test.
pub const WK: &str = env!("CARGO_BIN_EXE_wk");

/// A running single-node control plane.
pub struct Cluster {
    child: Child,
    /// The data directory.
    pub data: tempfile::TempDir,
    /// kubectl's HOME, so its discovery cache is this test's own.
    pub home: tempfile::TempDir,
    /// The admin kubeconfig the server wrote.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<String>>,
    /// The pod bridge of this cluster's agent.
    pub bridge: Option<Bridge>,
}

/// A test cluster's own pod bridge and cluster CIDR, so that clusters running side by side on
/// this host's network never share a bridge or a route. A data directory keeps its bridge
/// across a restart.
#[derive(Clone, Debug)]
pub struct Bridge {
    /// The cluster's number N, which its names and ranges derive from.
    pub n: u32,
    /// The bridge's name (`wkt<N>`).
    pub name: String,
    /// `100.<66+N>`: the cluster's /16 of the shared address space, clear of wk's default
    /// ranges (pods in 100.64/16, Services in 100.65/16), so that a `wk server` with its
    /// defaults may run beside the tests.
    pub prefix: String,
    /// `100.<66+N>.0.0/17`.
    pub cluster_cidr: String,
    /// `100.<66+N>.128.0/17`, the cluster's Service range.
    pub service_cidr: String,
}

impl Bridge {
    pub(crate) fn of(data: &std::path::Path) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let file = data.join(".test-bridge");
        let n: u32 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 62;
                std::fs::write(&file, n.to_string()).expect("write the bridge number");
                n
            });
        let prefix = format!("100.{}", 66 + n);
        Self {
            n,
            name: format!("wkt{n}"),
            cluster_cidr: format!("{prefix}.0.0/17"),
            service_cidr: format!("{prefix}.128.0/17"),
            prefix,
        }
    }

    /// The names of the links on this bridge.
    pub fn ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.name))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Cluster {
    /// Starts a server and waits until it serves.
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        Self::start_in(data)
    }

    /// Starts a server with these flags only (besides the data directory and the bookmark
    /// interval), for callers that pass `--no-agent` and join their own nodes.
    pub fn serving(args: &[&str]) -> Self {
        Self::launch(tempfile::tempdir().expect("temp dir"), false, false, args)
    }

    /// Starts a server on an existing data directory (for restart tests).
    pub fn start_in(data: tempfile::TempDir) -> Self {
        Self::launch(data, false, false, &[])
    }

    /// Starts a server with its built-in node agent (node `wk-test`), and waits until the
    /// Node is registered.
    pub fn with_agent() -> Self {
        Self::with_agent_in(tempfile::tempdir().expect("temp dir"))
    }

    /// As [`Cluster::with_agent`], on an existing data directory.
    pub fn with_agent_in(data: tempfile::TempDir) -> Self {
        Self::wait_for_agent(Self::launch(data, true, false, &[]))
    }

    /// As [`Cluster::with_agent`], with extra `wk server` flags.
    pub fn with_agent_args(args: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        Self::wait_for_agent(Self::launch(data, true, false, args))
    }

    /// As [`Cluster::with_agent`], with the server running as the unprivileged user `nobody`,
    /// which may not make network namespaces.
    pub fn with_unprivileged_agent() -> Self {
        Self::wait_for_agent(Self::launch(
            tempfile::tempdir().expect("temp dir"),
            true,
            true,
            &[],
        ))
    }

    /// Gives the data directory to `nobody` again, after root wrote into it.
    pub fn give_data_to_nobody(&self) {
        let out = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(self.data.path())
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_for_agent(c: Self) -> Self {
        assert!(
            eventually(Duration::from_secs(30), || c
                .log()
                .contains("wk agent running as node")),
            "the agent did not start:\n{}",
            c.log()
        );
        // A host link that holds the cluster's pod range (a wk server left running beside the
        // tests, say) would fail the test later and obscurely: say so now.
        let log = c.log();
        if let Some(line) = log.lines().find(|l| l.contains("pods get no address")) {
            panic!("the test cluster got no pod network: {line}");
        }
        c
    }

    /// The agent's data directory.
    pub fn agent_dir(&self) -> PathBuf {
        self.data.path().join("agent")
    }

    /// The agent's address records: (address, holder, veth). A holder is a pod's uid, or
    /// `spare-…` for a namespace the agent made ahead of need.
    pub fn address_records(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let ranges = std::fs::read_dir(self.agent_dir().join("net"))
            .into_iter()
            .flatten();
        for file in ranges
            .flatten()
            .flat_map(|r| std::fs::read_dir(r.path()))
            .flatten()
        {
            let Ok(file) = file else { continue };
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            let mut lines = text.lines();
            out.push((
                file.file_name().to_string_lossy().into_owned(),
                lines.next().unwrap_or_default().to_owned(),
                lines.next().unwrap_or_default().to_owned(),
            ));
        }
        out
    }

    /// The ports of the cluster's bridge that are not a spare namespace's.
    pub fn pod_ports(&self) -> Vec<String> {
        let spares: Vec<String> = self
            .address_records()
            .into_iter()
            .filter(|(_, holder, _)| holder.starts_with("spare-"))
            .map(|(_, _, link)| link)
            .collect();
        let bridge = self.bridge.as_ref().expect("a cluster with a bridge");
        bridge
            .ports()
            .into_iter()
            .filter(|p| !spares.contains(p))
            .collect()
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn launch(data: tempfile::TempDir, agent: bool, as_nobody: bool, extra: &[&str]) -> Self {
        let mut cmd = if as_nobody {
            std::os::unix::fs::chown(data.path(), Some(65534), Some(65534)).expect("chown");
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", WK]);
            c
        } else {
            Command::new(WK)
        };
        // A caller that passes `--no-agent` sets up the nodes and the listener itself.
        let remote = extra.contains(&"--no-agent");
        cmd.args(["server", "--bookmark-interval", "1"]);
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let bridge = agent.then(|| Bridge::of(data.path()));
        if let Some(b) = &bridge {
            // The agent listens on the node's address, where the API server reaches it.
            let node_ip = extra
                .iter()
                .position(|a| *a == "--node-ip")
                .map_or("127.0.0.1", |i| extra[i + 1]);
            cmd.args([
                "--node-name",
                "wk-test",
                "--agent-listen",
                &format!("{node_ip}:0"),
            ])
            .args(["--bridge", &b.name, "--cluster-cidr", &b.cluster_cidr])
            .args(["--service-cidr", &b.service_cidr]);
            // This host's own resolvers are never asked: a test names its upstream.
            if !extra.contains(&"--resolv-conf") {
                cmd.args(["--resolv-conf", ""]);
            }
        } else if !remote {
            // API tests watch exact event sequences: no scheduler writing to their pods.
            cmd.args(["--no-agent", "--disable", "scheduler"]);
        }
        let mut child = cmd
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "wk=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wk server");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("wk server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "wk server did not start:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        let kubeconfig = data.path().join("kubeconfig.yaml");
        Self {
            child,
            home: tempfile::tempdir().expect("temp dir"),
            data,
            kubeconfig,
            url,
            log,
            bridge,
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it, returning the data directory.
    pub fn stop(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        // SAFETY: kill with a valid pid and signal number has no memory effects.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(20))
            .expect("server did not exit after SIGTERM");
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("temp dir"));
        (status, data)
    }

    /// Kills the server at once (SIGKILL), as a node that fails, returning the data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().expect("temp dir"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBECACHEDIR");
        c
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl with `stdin` piped in.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(self.command("kubectl").args(args), stdin)
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        ok(
            self.kubectl(args),
            &format!("kubectl {}", args.join(" ")),
            &self.log(),
        )
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`, failing the test if it fails.
    pub fn jsonpath(&self, kind: &str, name: &str, path: &str) -> String {
        self.kubectl_ok(&["get", kind, name, "-o", &format!("jsonpath={path}")])
    }

    /// Applies a manifest from stdin with kubectl, failing the test if it fails.
    pub fn kubectl_apply(&self, manifest: &str) -> String {
        ok(
            self.kubectl_stdin(&["apply", "-f", "-"], manifest),
            "kubectl apply",
            &self.log(),
        )
    }

    /// Runs `wk` with `args`.
    pub fn wk(&self, args: &[&str]) -> Output {
        self.command(WK).args(args).output().expect("run wk")
    }

    /// Runs `wk` with `stdin` piped in.
    pub fn wk_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(self.command(WK).args(args), stdin)
    }

    /// Runs `wk` and returns its stdout, failing the test if it fails.
    pub fn wk_ok(&self, args: &[&str]) -> String {
        ok(
            self.wk(args),
            &format!("wk {}", args.join(" ")),
            &self.log(),
        )
    }

    /// Spawns kubectl with piped stdout, for watches.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Child {
        self.command("kubectl")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl")
    }

    /// Spawns wk with piped stdout, for watches.
    pub fn wk_spawn(&self, args: &[&str]) -> Child {
        self.command(WK)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wk")
    }
}

/// The pids of `wk-shim` processes running containers of the agent at `agent_dir`.
pub fn shims_of(agent_dir: &Path) -> Vec<u32> {
    let needle = agent_dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.first()?.ends_with(b"wk-shim")
                && args.get(2)?.windows(needle.len()).any(|w| w == needle))
            .then_some(pid)
        })
        .collect()
}

/// Stops the Linux containers an agent left running (they outlive it, for adoption), and
/// fails the test if any is left.
pub fn release_containers(agent_dir: &Path) {
    let gone = wk::agent::shim::stop_all(agent_dir);
    assert!(
        gone || std::thread::panicking(),
        "Linux containers of {} outlived their test",
        agent_dir.display()
    );
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        release_containers(&self.data.path().join("agent"));
        // Pods' namespaces outlive a killed agent (for adoption): release them, and with them
        // their veths, then the bridge.
        for dir in ["agent/netns", "agent/netns-spare"] {
            let netns = self.data.path().join(dir);
            for entry in std::fs::read_dir(&netns).into_iter().flatten().flatten() {
                let _ = Command::new("umount").arg("-l").arg(entry.path()).output();
            }
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", &b.name]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}-svc", b.name)])
                .output();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Waits for a child up to `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdin.take().expect("stdin");
    let input = stdin.to_owned();
    // The program may exit before reading everything (a refused body); that is its answer.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

fn ok(out: Output, what: &str, log: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}\nserver log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        log.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    stdout
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads lines from a child's stdout until `n` lines have arrived or `limit` passes.
pub fn read_lines(child: &mut Child, n: usize, limit: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Another node: a `wk agent` process joined to a cluster with its own data directory and
/// node name, without a pod network (its pods have only their loopback). Killed on drop.
pub struct ExtraAgent {
    child: Child,
    /// The command line, to start it again.
    args: Vec<String>,
    /// The network namespace it runs in (a test host), if not this one.
    netns: Option<PathBuf>,
    /// The node's name.
    pub name: String,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Cluster {
    /// Joins another agent as node `name`, with the standard guests imported and extra
    /// `wk agent` flags, and waits until it runs.
    pub fn add_agent(&self, name: &str, extra: &[&str]) -> ExtraAgent {
        let mut args = vec!["--agent-listen", "127.0.0.1:0", "--pod-network", "none"];
        args.extend_from_slice(extra);
        self.join_agent(name, None, &args)
    }

    /// Joins an agent as node `name` with the standard guests imported and exactly these
    /// `wk agent` flags (besides server, token, name and data directory), inside the network
    /// namespace at `netns` (a test host) if given, and waits until it runs.
    pub fn join_agent(&self, name: &str, netns: Option<PathBuf>, extra: &[&str]) -> ExtraAgent {
        let token =
            std::fs::read_to_string(self.data.path().join("node-token")).expect("node token");
        let dir = tempfile::tempdir().expect("temp dir");
        crate::guests::import_all_to(dir.path());
        // This host's own resolvers are never asked: a test names its upstream.
        let resolv = (!extra.contains(&"--resolv-conf")).then_some("--resolv-conf=");
        let mut args: Vec<String> = ["agent", "--server", &self.url, "--token", token.trim()]
            .into_iter()
            .chain(["--node-name", name])
            .chain(resolv)
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect();
        args.push("--data-dir".into());
        args.push(dir.path().to_string_lossy().into_owned());
        let log = Arc::new(Mutex::new(String::new()));
        let child = ExtraAgent::spawn(&args, netns.as_deref(), &log);
        let agent = ExtraAgent {
            child,
            args,
            netns,
            name: name.to_owned(),
            dir,
            log,
        };
        agent.wait_running();
        agent
    }
}

impl ExtraAgent {
    fn spawn(args: &[String], netns: Option<&std::path::Path>, log: &Arc<Mutex<String>>) -> Child {
        // nsenter joins the network namespace only: the agent's pod namespaces, bind-mounted
        // in its data directory, stay visible to the test.
        let mut cmd = match netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg(WK);
                c
            }
            None => Command::new(WK),
        };
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "wk=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wk agent");
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        child
    }

    fn wait_running(&self) {
        let running = format!("wk agent running as node {}", self.name);
        assert!(
            eventually(Duration::from_secs(30), || self.log().contains(&running)),
            "agent {} did not start:\n{}",
            self.name,
            self.log()
        );
    }

    /// Starts the agent again on the same data directory (after [`ExtraAgent::kill`]), and
    /// waits until it runs.
    pub fn restart(&mut self) {
        self.log.lock().expect("log").clear();
        self.child = Self::spawn(&self.args, self.netns.as_deref(), &self.log);
        self.wait_running();
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the agent as its service manager would (SIGTERM), and waits until it has.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        wait_timeout(&mut self.child, Duration::from_secs(30))
    }

    /// Kills the agent at once (SIGKILL), as a node that fails.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ExtraAgent {
    fn drop(&mut self) {
        self.kill();
        release_containers(self.dir.path());
        for dir in ["netns", "netns-spare"] {
            for entry in std::fs::read_dir(self.dir.path().join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = Command::new("umount").arg("-l").arg(entry.path()).output();
            }
        }
    }
}
