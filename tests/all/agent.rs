//! The node agent and the Wasm runtime, through the real `wk server` with its built-in agent,
//! driven by kubectl. Pods name the node `wk-test` (scheduling is another issue).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::guests::{self, import_all};
use crate::harness::{Cluster, eventually, stderr, stdout};

pub(crate) const LONG: Duration = Duration::from_secs(60);

/// A pod manifest on node wk-test: `spec` is the YAML under `spec:` (indented two spaces).
pub(crate) fn pod(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: wk-test\n{spec}"
    )
}

pub(crate) fn get(c: &Cluster, name: &str, path: &str) -> String {
    let out = c.kubectl(&["get", "pod", name, "-o", &format!("jsonpath={path}")]);
    stdout(&out)
}

pub(crate) fn wait_for(c: &Cluster, name: &str, path: &str, want: &str) {
    let mut last = String::new();
    let ok = eventually(LONG, || {
        last = get(c, name, path);
        last == want
    });
    assert!(
        ok,
        "pod {name}: {path} is {last:?}, not {want:?}\nevents:\n{}\nstatus: {}\nserver log:\n{}",
        stdout(&c.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}")
        ])),
        get(c, name, "{.status}"),
        tail(&c.log())
    );
}

pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub(crate) fn netns(c: &Cluster, name: &str) -> PathBuf {
    c.agent_dir()
        .join("netns")
        .join(get(c, name, "{.metadata.uid}"))
}

/// curl inside a pod's network namespace.
pub(crate) fn curl_in(c: &Cluster, name: &str, url: &str) -> (String, bool) {
    curl_in_with(c, name, &[], url)
}

/// As [`curl_in`], with more curl arguments.
pub(crate) fn curl_in_with(c: &Cluster, name: &str, args: &[&str], url: &str) -> (String, bool) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns(c, name).display()))
        .args(["curl", "-s", "-m", "10", "-w", " %{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run nsenter curl");
    (stdout(&out), out.status.success())
}

/// curl from the host.
pub(crate) fn curl(url: &str) -> (String, bool) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", url])
        .output()
        .expect("run curl");
    (stdout(&out), out.status.success())
}

pub(crate) fn apply(c: &Cluster, manifest: &str) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_node_registers_with_capacity_labels_and_a_lease() {
    let c = Cluster::with_agent();
    // Its log goes to a pipe here, as to a file or journald: plain text, no colour codes.
    let log = c.log();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "{log:?}");
    let node = |p: &str| c.jsonpath("node", "wk-test", p);
    assert_eq!(
        node("{.status.conditions[?(@.type==\"Ready\")].status}"),
        "True"
    );
    // 1000 by default, capped by the addresses of the node's /24 podCIDR.
    assert_eq!(node("{.status.capacity.pods}"), "253");
    assert!(!node("{.status.allocatable.memory}").is_empty());
    assert_eq!(node("{.metadata.labels.kubernetes\\.io/arch}"), wk_arch());
    assert_eq!(
        node("{.metadata.labels.kubernetes\\.io/hostname}"),
        "wk-test"
    );
    assert_eq!(
        node("{.status.nodeInfo.containerRuntimeVersion}"),
        "wasmtime://48.0.8"
    );
    assert!(node("{.status.nodeInfo.kubeletVersion}").starts_with("wk/v"));
    let holder = c.kubectl_ok(&[
        "get",
        "lease",
        "wk-test",
        "-n",
        "kube-node-lease",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "wk-test");
    // kubectl get nodes shows it Ready.
    let nodes = c.kubectl_ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("wk-test") && l.contains("Ready")),
        "{nodes}"
    );
}

fn wk_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

#[test]
fn a_command_pod_runs_to_completion_with_its_logs_and_exit_code() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "ok",
            "  restartPolicy: Never\n  containers:\n  - name: main\n    image: cmd:v1\n    imagePullPolicy: IfNotPresent\n    args: [env-args, \"two words\", \"$(GREETING)!\"]\n    env:\n    - {name: GREETING, value: hi}\n    - name: POD\n      valueFrom: {fieldRef: {fieldPath: metadata.name}}\n",
        ),
    );
    wait_for(&c, "ok", "{.status.phase}", "Succeeded");
    assert_eq!(
        get(
            &c,
            "ok",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    assert_eq!(
        get(
            &c,
            "ok",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "Completed"
    );
    assert!(get(&c, "ok", "{.status.containerStatuses[0].imageID}").contains("@sha256:"));
    let logs = c.kubectl_ok(&["logs", "ok"]);
    for want in [
        "arg[0]=cmd:v1",
        "arg[2]=two words",
        "arg[3]=hi!",
        "env:GREETING=hi",
        "env:POD=ok",
    ] {
        assert!(logs.contains(want), "{want} in {logs}");
    }
    assert!(
        !logs.contains("env:HOME="),
        "deny by default: no host env leaks in: {logs}"
    );

    // A non-zero exit: Failed, with the code. The wasi:cli component variant runs too.
    apply(
        &c,
        &pod(
            "three",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd:v1, args: [exit, \"3\"]}\n",
        ),
    );
    wait_for(&c, "three", "{.status.phase}", "Failed");
    assert_eq!(
        get(
            &c,
            "three",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    apply(
        &c,
        &pod(
            "p2",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd2:v1, args: [env-args]}\n",
        ),
    );
    wait_for(&c, "p2", "{.status.phase}", "Succeeded");
    assert!(c.kubectl_ok(&["logs", "p2"]).contains("arg[1]=env-args"));
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=ok",
    ]);
    for reason in ["Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "{reason} in {events}");
    }
}

#[test]
fn http_pods_answer_on_the_same_port_each_in_its_own_namespace() {
    let c = Cluster::with_agent();
    import_all(&c);
    for name in ["web-a", "web-b"] {
        apply(
            &c,
            &pod(
                name,
                &format!(
                    "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{{containerPort: 8000}}]\n    env: [{{name: WHO, value: {name}}}]\n"
                ),
            ),
        );
    }
    for name in ["web-a", "web-b"] {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
        assert_eq!(get(&c, name, "{.status.phase}"), "Running");
        let (body, ok) = curl_in(&c, name, "http://127.0.0.1:8000/");
        assert!(ok && body == "Hello from wk!\n 200", "{name}: {body}");
        let (body, _) = curl_in(&c, name, "http://127.0.0.1:8000/env/WHO");
        assert!(
            body.starts_with(name),
            "{name} answers with its own env: {body}"
        );
    }
    // The pods' port 8000 is not the host's.
    let host = Command::new("curl")
        .args(["-s", "-m", "2", "http://127.0.0.1:8000/"])
        .output()
        .unwrap();
    assert!(
        !stdout(&host).contains("Hello from wk"),
        "a pod's port leaked to the host"
    );
    let ready = get(
        &c,
        "web-a",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert_eq!(ready, "True");
}

#[test]
fn two_containers_of_a_pod_share_localhost_and_an_empty_dir() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "pair",
            "  restartPolicy: Never\n  volumes: [{name: shared, emptyDir: {}}]\n  containers:\n  - name: server\n    image: cmd2:v1\n    args: [serve-tcp, \"7000\", pong]\n  - name: client\n    image: cmd2:v1\n    args: [connect-tcp, \"7000\", ping]\n  - name: writer\n    image: cmd:v1\n    args: [write, /data/note, from-writer]\n    volumeMounts: [{name: shared, mountPath: /data}]\n  - name: reader\n    image: cmd:v1\n    args: [read, /data/note, --wait-ms, \"20000\"]\n    volumeMounts: [{name: shared, mountPath: /data, readOnly: true}]\n",
        ),
    );
    wait_for(
        &c,
        "pair",
        "{.status.containerStatuses[?(@.name==\"client\")].state.terminated.exitCode}",
        "0",
    );
    wait_for(
        &c,
        "pair",
        "{.status.containerStatuses[?(@.name==\"reader\")].state.terminated.exitCode}",
        "0",
    );
    assert_eq!(
        c.kubectl_ok(&["logs", "pair", "-c", "client"]).trim(),
        "pong:ping"
    );
    assert_eq!(
        c.kubectl_ok(&["logs", "pair", "-c", "reader"]).trim(),
        "from-writer"
    );
    // A second pod on the same port does not reach the first pod's server.
    apply(
        &c,
        &pod(
            "lonely",
            "  restartPolicy: Never\n  containers:\n  - name: client\n    image: cmd2:v1\n    args: [connect-tcp, \"7000\", ping, --retry-ms, \"300\"]\n",
        ),
    );
    wait_for(
        &c,
        "lonely",
        "{.status.containerStatuses[0].state.terminated.exitCode}",
        "1",
    );
}

#[test]
fn a_read_only_mount_refuses_writes_inside_the_guest() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
    );
    apply(
        &c,
        &pod(
            "ro",
            "  restartPolicy: Never\n  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: conf, configMap: {name: settings}}\n  initContainers:\n  - name: try-write\n    image: cmd:v1\n    args: [write, /scratch/x, data]\n    volumeMounts: [{name: scratch, mountPath: /scratch, readOnly: true}]\n  containers:\n  - {name: main, image: cmd:v1, args: [ls, /conf], volumeMounts: [{name: conf, mountPath: /conf}]}\n",
        ),
    );
    // restartPolicy Never and a failing init container: the pod fails.
    wait_for(&c, "ro", "{.status.phase}", "Failed");
    let refused = c.kubectl_ok(&["logs", "ro", "-c", "try-write"]);
    assert!(
        refused.starts_with("error:"),
        "the guest saw its write fail: {refused}"
    );
    assert_eq!(
        get(
            &c,
            "ro",
            "{.status.initContainerStatuses[0].state.terminated.exitCode}"
        ),
        "1"
    );
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
    );
    apply(
        &c,
        &pod(
            "inits",
            "  restartPolicy: Never\n  volumes:\n  - {name: work, emptyDir: {}}\n  - {name: conf, configMap: {name: settings}}\n  initContainers:\n  - {name: first, image: cmd:v1, args: [write, /w/one, \"1\"], volumeMounts: [{name: work, mountPath: /w}]}\n  - {name: second, image: cmd:v1, args: [read, /w/one], volumeMounts: [{name: work, mountPath: /w}]}\n  containers:\n  - {name: main, image: cmd:v1, args: [ls, /w, /conf], volumeMounts: [{name: work, mountPath: /w}, {name: conf, mountPath: /conf}]}\n",
        ),
    );
    wait_for(&c, "inits", "{.status.phase}", "Succeeded");
    assert_eq!(c.kubectl_ok(&["logs", "inits", "-c", "second"]), "1");
    let listing = c.kubectl_ok(&["logs", "inits", "-c", "main"]);
    assert!(listing.contains("file:/w/one:1"), "{listing}");
    assert!(
        listing.contains("file:/conf/mode:fast"),
        "configMap projected as a file: {listing}"
    );
    let init_ok = get(
        &c,
        "inits",
        "{.status.initContainerStatuses[*].state.terminated.exitCode}",
    );
    assert_eq!(init_ok, "0 0");
}

#[test]
fn restart_policy_and_back_off_behave_like_the_kubelet() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "crash",
            "  containers:\n  - {name: main, image: cmd:v1, args: [exit, \"2\"]}\n",
        ),
    );
    wait_for(
        &c,
        "crash",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CrashLoopBackOff",
    );
    assert_eq!(
        get(
            &c,
            "crash",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "2"
    );
    assert_eq!(get(&c, "crash", "{.status.phase}"), "Running");
    let scheduled = "{.status.conditions[?(@.type==\"PodScheduled\")].lastTransitionTime}";
    let scheduled_at = get(&c, "crash", scheduled);
    assert!(!scheduled_at.is_empty());
    // The first back-off is 10 s; then the container runs again and counts a restart.
    wait_for(
        &c,
        "crash",
        "{.status.containerStatuses[0].restartCount}",
        "1",
    );
    // A condition's time is when its status changed, not when the status was last written.
    assert_eq!(get(&c, "crash", scheduled), scheduled_at);
    let listed = c.kubectl_ok(&["get", "pod", "crash"]);
    assert!(listed.contains("crash"), "{listed}");
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
    ]);
    assert!(
        events.contains("Back-off restarting failed container"),
        "{events}"
    );
    // The previous run's log is there.
    let previous = c.kubectl_ok(&["logs", "crash", "--previous"]);
    assert!(previous.contains("exiting 2"), "{previous}");

    // OnFailure: a clean exit is not restarted.
    apply(
        &c,
        &pod(
            "once",
            "  restartPolicy: OnFailure\n  containers:\n  - {name: main, image: cmd:v1, args: [exit, \"0\"]}\n",
        ),
    );
    wait_for(&c, "once", "{.status.phase}", "Succeeded");
    assert_eq!(
        get(&c, "once", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn hostile_guests_hurt_only_their_own_pod() {
    let c = Cluster::with_agent();
    import_all(&c);
    guests::import(&c, &guests::wat("loop.wat"), "loop:v1");
    apply(
        &c,
        &pod(
            "web",
            "  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "bomb",
            "  restartPolicy: Never\n  containers:\n  - name: main\n    image: cmd:v1\n    args: [alloc-mb, \"4000\"]\n    resources: {limits: {memory: 64Mi}}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "deep",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd:v1, args: [recurse]}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "spin",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd:v1, args: [spin], resources: {limits: {cpu: 100m}}}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "wat-loop",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: loop:v1}\n",
        ),
    );
    wait_for(
        &c,
        "bomb",
        "{.status.containerStatuses[0].state.terminated.reason}",
        "OOMKilled",
    );
    assert_eq!(
        get(
            &c,
            "bomb",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );
    wait_for(&c, "deep", "{.status.phase}", "Failed");
    assert!(
        get(
            &c,
            "deep",
            "{.status.containerStatuses[0].state.terminated.message}"
        )
        .contains("stack"),
        "{}",
        get(&c, "deep", "{.status}")
    );
    wait_for(&c, "spin", "{.status.phase}", "Running");
    wait_for(&c, "wat-loop", "{.status.phase}", "Running");
    wait_for(&c, "web", "{.status.containerStatuses[0].ready}", "true");
    // The neighbour still serves while the loops spin.
    let (body, _) = curl_in(&c, "web", "http://127.0.0.1:8000/");
    assert_eq!(body, "Hello from wk!\n 200");
    // Deleting stops the infinite loops.
    c.kubectl_ok(&["delete", "pod", "spin", "wat-loop", "--timeout=30s"]);
    let gone = c.kubectl(&["get", "pod", "spin"]);
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
    // A module that is not Wasm never gets stored.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"#!/bin/sh\necho hi\n").unwrap();
    let out = Command::new(crate::harness::WK)
        .args(["image", "import"])
        .arg(junk.path())
        .args(["--name", "junk:v1", "--data-dir"])
        .arg(c.agent_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a WebAssembly module"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn graceful_deletion_waits_for_in_flight_requests() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "slow",
            "  terminationGracePeriodSeconds: 20\n  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
        ),
    );
    wait_for(&c, "slow", "{.status.containerStatuses[0].ready}", "true");
    let ns = netns(&c, "slow");
    let request = std::thread::spawn(move || {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args([
                "curl",
                "-s",
                "-m",
                "20",
                "-w",
                " %{http_code}",
                "http://127.0.0.1:8000/slow?ms=2000",
            ])
            .output()
            .unwrap();
        stdout(&out)
    });
    std::thread::sleep(Duration::from_millis(500));
    c.kubectl_ok(&["delete", "pod", "slow", "--timeout=30s"]);
    let answer = request.join().unwrap();
    assert_eq!(answer, "slow 2000\n 200", "the in-flight request finished");
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=slow",
    ]);
    assert!(events.contains("Stopping container hello"), "{events}");
}

#[test]
fn logs_follow_through_kubectl_and_wk() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "ticker",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd:v1, args: [print-loop, \"15\", \"100\"]}\n",
        ),
    );
    wait_for(&c, "ticker", "{.status.phase}", "Running");
    // -f streams until the container ends, then kubectl exits by itself.
    let followed = c.kubectl_ok(&["logs", "-f", "ticker"]);
    assert_eq!(followed.lines().last(), Some("line 15"), "{followed}");
    assert_eq!(followed.lines().count(), 15, "{followed}");
    let tail = c.kubectl_ok(&["logs", "ticker", "--tail=2"]);
    assert_eq!(tail, "line 14\nline 15\n");
    let stamped = c.kubectl_ok(&["logs", "ticker", "--timestamps", "--tail=1"]);
    assert!(
        stamped.starts_with("20") && stamped.ends_with("Z line 15\n"),
        "{stamped}"
    );
    let wk = c.wk_ok(&["logs", "ticker", "--tail", "1"]);
    assert_eq!(wk, "line 15\n");
    let multi = c.kubectl(&["logs", "nope"]);
    assert!(stderr(&multi).contains("NotFound"), "{}", stderr(&multi));
}

fn count_dir(path: PathBuf) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn an_agent_restart_adopts_running_pods_without_leaks_or_duplicates() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "web",
            "  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "crash",
            "  containers:\n  - {name: main, image: cmd:v1, args: [exit, \"2\"]}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "done",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: cmd:v1, args: [exit, \"0\"]}\n",
        ),
    );
    wait_for(&c, "web", "{.status.containerStatuses[0].ready}", "true");
    wait_for(
        &c,
        "crash",
        "{.status.containerStatuses[0].restartCount}",
        "1",
    );
    wait_for(&c, "done", "{.status.phase}", "Succeeded");
    let web_uid = get(&c, "web", "{.metadata.uid}");
    let web_ip = get(&c, "web", "{.status.podIP}");
    assert!(!web_ip.is_empty());
    // Namespaces are kept ready for the next pods, and given back when the agent stops.
    assert!(eventually(LONG, || count_dir(
        c.agent_dir().join("netns-spare")
    ) == 2));
    // The Node's conditions keep their transition times across the restart, as the kubelet's
    // do; their heartbeat moves on.
    let ready = |c: &Cluster, field: &str| {
        c.jsonpath(
            "node",
            "wk-test",
            &format!("{{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        )
    };
    let (since, beat) = (
        ready(&c, "lastTransitionTime"),
        ready(&c, "lastHeartbeatTime"),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (status, data) = c.stop();
    assert!(status.success(), "{status}");
    assert_eq!(count_dir(data.path().join("agent/netns-spare")), 0);
    // A sandbox of a pod that vanished while the agent was down.
    let stale = data
        .path()
        .join("agent/pods/00000000-dead-beef-0000-000000000000");
    std::fs::create_dir_all(&stale).unwrap();

    let c = Cluster::with_agent_in(data);
    wait_for(&c, "web", "{.status.containerStatuses[0].ready}", "true");
    assert_eq!(ready(&c, "lastTransitionTime"), since);
    assert_ne!(ready(&c, "lastHeartbeatTime"), beat);
    let (body, _) = curl_in(&c, "web", "http://127.0.0.1:8000/");
    assert!(body.starts_with("Hello from wk!"), "{body}");
    assert_eq!(get(&c, "web", "{.metadata.uid}"), web_uid);
    // It keeps its address, and is reachable at it through the bridge made again.
    assert_eq!(get(&c, "web", "{.status.podIP}"), web_ip);
    let (body, _) = curl(&format!("http://{web_ip}:8000/"));
    assert_eq!(body, "Hello from wk!\n");
    // Restart counts survive; the finished pod is not run again.
    let restarts: u32 = get(&c, "crash", "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap();
    assert!(restarts >= 1, "{restarts}");
    assert_eq!(get(&c, "done", "{.status.phase}"), "Succeeded");
    assert!(!stale.exists(), "the orphaned sandbox was cleaned");
    assert_eq!(
        count_dir(c.agent_dir().join("netns")),
        3,
        "one namespace per pod, no more"
    );
    c.kubectl_ok(&["delete", "pod", "--all", "--timeout=60s"]);
    assert!(eventually(LONG, || count_dir(c.agent_dir().join("netns")) == 0));
    assert_eq!(count_dir(c.agent_dir().join("pods")), 0);
}

fn proc_count(pid: u32, what: &str) -> usize {
    count_dir(PathBuf::from(format!("/proc/{pid}/{what}")))
}

#[test]
fn create_delete_cycles_leave_no_thread_fd_or_namespace_behind() {
    let c = Cluster::with_agent();
    import_all(&c);
    // Warm up: the first pods start lazily created runtime threads and cached modules.
    let batch = |round: usize| -> String {
        (0..20)
            .map(|i| {
                let image = if i % 2 == 0 { "hello:v1" } else { "cmd:v1" };
                let extra = if i % 2 == 0 { "ports: [{containerPort: 8000}]" } else { "args: [sleep, \"60000\"]" };
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: cycle-{round}-{i}, labels: {{cycle: \"yes\"}}}}\nspec:\n  nodeName: wk-test\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: {image}, {extra}}}\n---\n"
                )
            })
            .collect()
    };
    let run_round = |round: usize| {
        apply(&c, &batch(round));
        assert!(
            eventually(LONG, || {
                let phases = c.kubectl_ok(&[
                    "get",
                    "pods",
                    "-l",
                    "cycle=yes",
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ]);
                phases
                    .split_whitespace()
                    .filter(|p| *p == "Running")
                    .count()
                    == 20
            }),
            "round {round}: not all running"
        );
        c.kubectl_ok(&["delete", "pods", "-l", "cycle=yes", "--timeout=60s"]);
    };
    run_round(0);
    let pid = c.pid();
    let (threads, fds) = (proc_count(pid, "task"), proc_count(pid, "fd"));
    for round in 1..=10 {
        run_round(round);
    }
    assert!(eventually(Duration::from_secs(10), || proc_count(
        pid, "task"
    ) <= threads));
    assert!(
        proc_count(pid, "fd") <= fds + 2,
        "fds grew from {fds} to {} over 200 pods",
        proc_count(pid, "fd")
    );
    assert_eq!(count_dir(c.agent_dir().join("netns")), 0);
    assert_eq!(count_dir(c.agent_dir().join("pods")), 0);
    assert_eq!(c.pod_ports(), Vec::<String>::new(), "no pod's veth is left");
    // What is left is the spare namespaces' (made ahead for the next pods): each with its
    // address and its veth on the bridge, no more of them than the pool keeps.
    let bridge = c.bridge.clone().unwrap();
    let records = c.address_records();
    assert!(records.len() <= 2, "{records:?}");
    for (ip, holder, link) in &records {
        assert!(
            holder.starts_with("spare-"),
            "{ip} is still held by {holder}"
        );
        assert!(bridge.ports().contains(link), "{link} of {holder}");
    }
    assert_eq!(bridge.ports().len(), records.len(), "{:?}", bridge.ports());
}

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "sick",
            "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{name: http, containerPort: 8000}]\n    livenessProbe:\n      httpGet: {path: /fail, port: http}\n      periodSeconds: 1\n      failureThreshold: 2\n",
        ),
    );
    wait_for(
        &c,
        "sick",
        "{.status.containerStatuses[0].restartCount}",
        "1",
    );
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sick",
    ]);
    assert!(
        events.contains("Liveness probe failed: HTTP probe failed with statuscode: 500"),
        "{events}"
    );
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
    // A healthy probe leaves the container alone.
    apply(
        &c,
        &pod(
            "well",
            "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n    livenessProbe: {tcpSocket: {port: 8000}, periodSeconds: 1}\n    startupProbe: {httpGet: {path: /, port: 8000}, periodSeconds: 1}\n",
        ),
    );
    wait_for(&c, "well", "{.status.containerStatuses[0].ready}", "true");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        get(&c, "well", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn a_readiness_probe_flips_the_ready_condition() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "gate",
            "  volumes: [{name: flags, emptyDir: {}}]\n  containers:\n  - name: main\n    image: cmd:v1\n    args: [sleep, \"600000\"]\n    volumeMounts: [{name: flags, mountPath: /flags}]\n    readinessProbe:\n      exec: {command: [probe, read, /flags/ready]}\n      periodSeconds: 1\n",
        ),
    );
    wait_for(&c, "gate", "{.status.phase}", "Running");
    let ready = |c: &Cluster| {
        get(
            c,
            "gate",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        )
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready(&c), "False", "not ready until the probe passes");
    let flag = c
        .agent_dir()
        .join("pods")
        .join(get(&c, "gate", "{.metadata.uid}"))
        .join("volumes/flags/ready");
    std::fs::write(&flag, "yes").unwrap();
    wait_for(
        &c,
        "gate",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
    );
    assert_eq!(
        get(&c, "gate", "{.status.containerStatuses[0].ready}"),
        "true"
    );
    std::fs::remove_file(&flag).unwrap();
    wait_for(
        &c,
        "gate",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "False",
    );
    assert_eq!(
        get(&c, "gate", "{.status.containerStatuses[0].restartCount}"),
        "0",
        "readiness never restarts"
    );
}

#[test]
fn configmap_and_secret_volumes_follow_their_objects() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
    );
    apply(
        &c,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: hunter2}\n",
    );
    apply(
        &c,
        &pod(
            "watcher",
            "  volumes:\n  - {name: conf, configMap: {name: settings, items: [{key: mode, path: sub/mode.txt}]}}\n  - {name: sec, secret: {secretName: creds, defaultMode: 0400}}\n  - name: info\n    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}\n  containers:\n  - name: main\n    image: cmd:v1\n    args: [sleep, \"600000\"]\n    volumeMounts: [{name: conf, mountPath: /conf}, {name: sec, mountPath: /sec}, {name: info, mountPath: /info}]\n",
        ),
    );
    wait_for(&c, "watcher", "{.status.phase}", "Running");
    let vol = c
        .agent_dir()
        .join("pods")
        .join(get(&c, "watcher", "{.metadata.uid}"))
        .join("volumes");
    assert_eq!(
        std::fs::read_to_string(vol.join("conf/sub/mode.txt")).unwrap(),
        "fast"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("sec/password")).unwrap(),
        "hunter2"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(vol.join("sec/password"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o400
    );
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"mode":"slow"}}"#,
    ]);
    assert!(
        eventually(LONG, || std::fs::read_to_string(
            vol.join("conf/sub/mode.txt")
        )
        .is_ok_and(|m| m == "slow")),
        "the configMap volume was not updated"
    );
}

#[test]
fn a_pre_stop_exec_hook_runs_before_the_container_stops() {
    let c = Cluster::with_agent();
    import_all(&c);
    let host = tempfile::tempdir().unwrap();
    apply(
        &c,
        &pod(
            "hooked",
            &format!(
                "  volumes: [{{name: out, hostPath: {{path: {}, type: Directory}}}}]\n  containers:\n  - name: main\n    image: cmd:v1\n    args: [sleep, \"600000\"]\n    volumeMounts: [{{name: out, mountPath: /out}}]\n    lifecycle:\n      preStop:\n        exec: {{command: [hook, write, /out/stopped, bye]}}\n",
                host.path().display()
            ),
        ),
    );
    wait_for(&c, "hooked", "{.status.phase}", "Running");
    c.kubectl_ok(&["delete", "pod", "hooked", "--timeout=60s"]);
    assert_eq!(
        std::fs::read_to_string(host.path().join("stopped")).unwrap(),
        "bye"
    );
}

#[test]
fn the_scheduler_binds_pods_to_a_node_that_fits_or_says_why_not() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: free}\nspec:\n  restartPolicy: Never\n  containers: [{name: main, image: cmd:v1, args: [exit, \"0\"]}]\n",
    );
    wait_for(&c, "free", "{.spec.nodeName}", "wk-test");
    wait_for(&c, "free", "{.status.phase}", "Succeeded");
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: hdd}\n  containers: [{name: main, image: cmd:v1}]\n",
    );
    wait_for(
        &c,
        "picky",
        "{.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        "Unschedulable",
    );
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=picky",
    ]);
    assert!(
        events.contains(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{events}"
    );
    // A cordoned node takes no new pods; uncordoned, it takes the waiting one.
    c.kubectl_ok(&["cordon", "wk-test"]);
    c.kubectl_ok(&["label", "node", "wk-test", "disk=hdd"]);
    wait_for(
        &c,
        "picky",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
        "0/1 nodes are available: 1 node(s) were unschedulable.",
    );
    c.kubectl_ok(&["uncordon", "wk-test"]);
    wait_for(&c, "picky", "{.spec.nodeName}", "wk-test");
}

#[test]
fn a_component_s_wit_hooks_stop_it_gracefully_and_check_its_health() {
    let c = Cluster::with_agent();
    import_all(&c);
    guests::import(&c, &guests::hooks(), "hooks:v1");
    let state = tempfile::tempdir().unwrap();
    apply(
        &c,
        &pod(
            "hooked",
            &format!(
                "  terminationGracePeriodSeconds: 60\n  volumes: [{{name: state, hostPath: {{path: {}, type: Directory}}}}]\n  containers:\n  - name: main\n    image: hooks:v1\n    volumeMounts: [{{name: state, mountPath: /state}}]\n",
                state.path().display()
            ),
        ),
    );
    wait_for(&c, "hooked", "{.status.phase}", "Running");
    assert!(eventually(LONG, || c
        .kubectl_ok(&["logs", "hooked"])
        .contains("started")));
    // No livenessProbe: the agent calls wk:pod/health.check every 10 s.
    std::fs::write(state.path().join("unhealthy"), "").unwrap();
    assert!(
        eventually(LONG, || c
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=hooked"
            ])
            .contains(
                "Liveness check wk:pod/health.check failed: unhealthy flag set"
            )),
        "no Unhealthy event from the health export"
    );
    std::fs::remove_file(state.path().join("unhealthy")).unwrap();
    // Deleting calls pre-stop in a fresh instance; it tells the running one to stop through
    // the shared directory, and the running one exits by itself (code 0, not a kill's 137).
    let mut watch = c.kubectl_spawn(&[
        "get",
        "pod",
        "hooked",
        "-w",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}{\"\\n\"}",
    ]);
    c.kubectl_ok(&["delete", "pod", "hooked", "--timeout=90s"]);
    assert_eq!(
        std::fs::read_to_string(state.path().join("stop")).unwrap(),
        "requested"
    );
    let codes = crate::harness::read_lines(&mut watch, 50, Duration::from_secs(3));
    let _ = watch.kill();
    assert!(
        codes.iter().any(|l| l == "0"),
        "the command did not exit by itself: {codes:?}"
    );
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=hooked",
    ]);
    assert!(!events.contains("FailedPreStopHook"), "{events}");
}

/// The millicores and memory column of pod `name`'s row in `kubectl top pod` output.
fn top_columns(text: &str, name: &str) -> Option<(i64, String)> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut fields = line.split_whitespace().skip(1);
    let cpu = fields.next()?.strip_suffix('m')?.parse().ok()?;
    Some((cpu, fields.next()?.to_owned()))
}

/// `kubectl top pod NAME` once the pod uses CPU: the output, its millicores and its memory
/// column. CPU is a rate: it needs two samples, 10 s apart.
pub(crate) fn busy_top(c: &Cluster, name: &str) -> (String, i64, String) {
    let mut top = String::new();
    assert!(
        eventually(LONG, || {
            top = stdout(&c.kubectl(&["top", "pod", name]));
            top_columns(&top, name).is_some_and(|(m, _)| m > 0)
        }),
        "kubectl top pod: {top}"
    );
    let (cpu, memory) = top_columns(&top, name).unwrap();
    (top, cpu, memory)
}

#[test]
fn top_reports_pod_and_node_usage_through_the_metrics_api() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "busy",
            "  containers:\n  - {name: main, image: cmd:v1, args: [spin], resources: {limits: {cpu: 200m}}}\n",
        ),
    );
    wait_for(&c, "busy", "{.status.phase}", "Running");
    let (top, used, mem) = busy_top(&c, "busy");
    assert!(
        used <= 400,
        "a 200m limit keeps the spinning guest near 200m, not a core: {top}"
    );
    assert!(mem.ends_with("Mi"), "{top}");
    let nodes = c.kubectl_ok(&["top", "node"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("wk-test") && l.contains('%')),
        "{nodes}"
    );
    let wk = c.wk_ok(&["top", "pod", "--containers"]);
    assert!(
        wk.lines()
            .any(|l| l.starts_with("busy") && l.contains("main")),
        "{wk}"
    );
}

#[test]
fn a_pod_s_concurrency_limit_and_request_timeout_hold() {
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: one-at-a-time\n  annotations:\n    wk.dev/max-concurrent-requests: \"1\"\n    wk.dev/request-timeout-seconds: \"4\"\nspec:\n  nodeName: wk-test\n  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
    );
    wait_for(
        &c,
        "one-at-a-time",
        "{.status.containerStatuses[0].ready}",
        "true",
    );
    // With one slot, a quick request sent while a slow one runs waits for the slot: about the
    // 2 s the slow one still has to go (without the limit it would take milliseconds).
    let timed = |url: &'static str| {
        let ns = netns(&c, "one-at-a-time");
        std::thread::spawn(move || {
            let sent = std::time::Instant::now();
            let out = Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["curl", "-s", "-m", "20", "-w", " %{http_code}", url])
                .output()
                .unwrap();
            (stdout(&out), sent.elapsed())
        })
    };
    let slow = timed("http://127.0.0.1:8000/slow?ms=3000");
    std::thread::sleep(Duration::from_millis(1000));
    let quick = timed("http://127.0.0.1:8000/");
    let (slow, _) = slow.join().unwrap();
    let (quick, waited) = quick.join().unwrap();
    assert_eq!(slow, "slow 3000\n 200");
    assert_eq!(quick, "Hello from wk!\n 200");
    assert!(
        waited >= Duration::from_millis(1500),
        "the second request was served after {waited:?}, while the only slot was taken"
    );
    // Past the timeout the client gets 504, and the pod keeps serving.
    let (body, _) = curl_in(&c, "one-at-a-time", "http://127.0.0.1:8000/slow?ms=6000");
    assert_eq!(body, "the guest did not answer in time\n 504");
    let (body, _) = curl_in(&c, "one-at-a-time", "http://127.0.0.1:8000/");
    assert_eq!(body, "Hello from wk!\n 200");

    // A bad setting is named in the container's status.
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad-limit\n  annotations:\n    wk.dev/max-concurrent-requests: ten\nspec:\n  nodeName: wk-test\n  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
    );
    wait_for(
        &c,
        "bad-limit",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerConfigError",
    );
    let message = get(
        &c,
        "bad-limit",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        message.contains("wk.dev/max-concurrent-requests") && message.contains("ten"),
        "{message}"
    );
}

#[test]
fn instance_reuse_serves_requests_in_turn_and_is_refused_for_a_component_that_cannot() {
    let c = Cluster::with_agent();
    import_all(&c);
    let pod = |name: &str, annotations: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  nodeName: wk-test\n  containers:\n  - {{name: hello, image: hello:v1, ports: [{{containerPort: 8000}}], resources: {{limits: {{cpu: \"{cpu}\"}}}}}}\n"
        )
    };
    // Fresh instances, two of them made ahead of need.
    apply(&c, &pod("fresh", "wk.dev/prewarm-instances: \"2\"", "500m"));
    // Served on two threads (its CPU limit) inside the pod's namespace.
    apply(&c, &pod("reused", "wk.dev/instance-reuse: \"3\"", "2"));
    apply(&c, &pod("once", "wk.dev/instance-reuse: \"100\"", "500m"));
    for name in ["fresh", "reused", "once"] {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
    }
    let counts = |name: &str| -> Vec<u32> {
        (0..6)
            .map(|_| {
                let (body, _) = curl_in(&c, name, "http://127.0.0.1:8000/count");
                let (n, status) = body.split_once('\n').expect("a count");
                assert_eq!(status, " 200", "{body}");
                n.parse().expect("a number")
            })
            .collect()
    };
    // By default every request has an instance of its own, made ahead or not.
    assert_eq!(counts("fresh"), [1; 6]);
    assert_eq!(counts("fresh"), [1; 6]);
    // The two made ahead wait with their memory (about 1 MiB each for this guest), which the
    // metrics API counts; a pod that keeps none holds none between requests (checked below).
    let memory_mi = |name: &str| -> Option<u64> {
        let top = stdout(&c.kubectl(&["top", "pod", name]));
        let (_, memory) = top_columns(&top, name)?;
        memory.strip_suffix("Mi")?.parse().ok()
    };
    let mut made_ahead = None;
    assert!(
        eventually(LONG, || {
            made_ahead = memory_mi("fresh");
            made_ahead.is_some_and(|m| m >= 2)
        }),
        "kubectl top pod fresh: {made_ahead:?} MiB, not two instances' worth"
    );
    // With reuse one instance serves requests in turn, three at most.
    let reused = counts("reused");
    assert_eq!(reused.iter().max(), Some(&3), "{reused:?}");
    // Its worker threads are inside the pod's namespace: the guest reaches the pod's own
    // localhost (from the node's network nothing listens there).
    let (body, _) = curl_in(
        &c,
        "reused",
        "http://127.0.0.1:8000/fetch?url=http%3A%2F%2F127.0.0.1%3A8000%2Fcount",
    );
    assert!(body.starts_with("200 ") && body.ends_with(" 200"), "{body}");
    // A component that fails on its second request: that request is served again on a fresh
    // instance, body and all, reuse is turned off, and the container's log says why.
    let once = "http://127.0.0.1:8000/once";
    assert_eq!(curl_in(&c, "once", once).0, "once\n 200");
    assert!(!c.kubectl_ok(&["logs", "once"]).contains("refused"));
    let body = "ping ".repeat(1000);
    let (answer, _) = curl_in_with(&c, "once", &["-d", &body], once);
    assert!(
        answer == format!("{body} 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    let log = c.kubectl_ok(&["logs", "once"]);
    assert!(
        log.contains("wk.dev/instance-reuse refused") && log.contains("fresh instance"),
        "{log}"
    );
    for _ in 0..2 {
        assert_eq!(curl_in(&c, "once", once).0, "once\n 200");
    }
    assert_eq!(counts("once"), [1; 6]);
    let mut kept = None;
    assert!(
        eventually(LONG, || {
            kept = memory_mi("once");
            kept == Some(0)
        }),
        "kubectl top pod once: {kept:?} MiB after its requests"
    );
}

#[test]
fn a_host_port_is_served_inside_the_pod() {
    let c = Cluster::with_agent();
    import_all(&c);
    let port = free_port();
    apply(
        &c,
        &pod(
            "on-host-port",
            &format!(
                "  containers:\n  - name: hello\n    image: hello:v1\n    env: [{{name: GREETING, value: \"from the pod on {port}\"}}]\n    ports: [{{containerPort: 8000, hostPort: {port}}}]\n"
            ),
        ),
    );
    wait_for(
        &c,
        "on-host-port",
        "{.status.containerStatuses[0].ready}",
        "true",
    );
    let (body, _) = curl(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(body, format!("from the pod on {port}"));
    // A connection to the hostPort is served on the pod's own thread, inside its namespace
    // and limits: the guest's own request to 127.0.0.1:8000 reaches the pod's localhost (on
    // the node's, nothing of this pod listens there).
    let (body, _) = curl(&format!(
        "http://127.0.0.1:{port}/fetch?url=http%3A%2F%2F127.0.0.1%3A8000%2F"
    ));
    assert_eq!(body, format!("200 from the pod on {port}"));
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .count()
}

#[test]
fn a_busy_pod_without_a_cpu_limit_spreads_over_the_cores_and_an_idle_one_does_not() {
    assert!(
        std::thread::available_parallelism().unwrap().get() > 1,
        "this test needs a machine with two cores or more"
    );
    let c = Cluster::with_agent();
    import_all(&c);
    apply(
        &c,
        &pod(
            "busy",
            "  containers:\n  - {name: spreads, image: hello:v1, ports: [{containerPort: 8000}]}\n",
        ),
    );
    wait_for(&c, "busy", "{.status.containerStatuses[0].ready}", "true");
    let pid = c.pid();
    // Worker threads are named after the container.
    let workers = || threads_named(pid, "pod-spreads");
    // One connection at a time is served on the pod's own thread.
    for _ in 0..3 {
        assert_eq!(
            curl_in(&c, "busy", "http://127.0.0.1:8000/").0,
            "Hello from wk!\n 200"
        );
    }
    assert_eq!(workers(), 0, "an idle pod has no worker threads");
    // Two open at once start its worker threads.
    let ns = netns(&c, "busy");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args([
                    "curl",
                    "-s",
                    "-m",
                    "20",
                    "http://127.0.0.1:8000/slow?ms=3000",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run nsenter curl")
        })
        .collect();
    let mut seen = 0;
    assert!(
        eventually(LONG, || {
            seen = workers();
            seen >= 2
        }),
        "worker threads while two requests are open: {seen}"
    );
    // A connection made now is served there, inside the pod's namespace: the guest reaches
    // the pod's own localhost.
    let (body, _) = curl_in(
        &c,
        "busy",
        "http://127.0.0.1:8000/fetch?url=http%3A%2F%2F127.0.0.1%3A8000%2F",
    );
    assert_eq!(body, "200 Hello from wk!\n 200");
    for child in slow {
        let out = child.wait_with_output().unwrap();
        assert_eq!(stdout(&out), "slow 3000\n");
    }
    // They end with the pod.
    let out = c.kubectl(&["delete", "pod", "busy", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(LONG, || workers() == 0),
        "worker threads left after the pod: {}",
        workers()
    );
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn without_privileges_pods_share_the_host_network_and_clashing_ports_are_refused() {
    let c = Cluster::with_unprivileged_agent();
    import_all(&c);
    c.give_data_to_nobody();
    assert!(
        c.log().contains("network namespaces are unavailable"),
        "the agent warns: {}",
        tail(&c.log())
    );
    let annotation = c.jsonpath(
        "node",
        "wk-test",
        "{.metadata.annotations.wk\\.dev/host-network-fallback}",
    );
    assert_eq!(annotation, "true");
    let ready = c.jsonpath(
        "node",
        "wk-test",
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    assert!(ready.contains("share the host network"), "{ready}");

    let port = free_port();
    let web = |name: &str| {
        pod(
            name,
            &format!(
                "  containers:\n  - {{name: hello, image: hello:v1, ports: [{{containerPort: {port}}}]}}\n"
            ),
        )
    };
    apply(&c, &web("first"));
    wait_for(&c, "first", "{.status.containerStatuses[0].ready}", "true");
    let node_ip = c.jsonpath(
        "node",
        "wk-test",
        "{.status.addresses[?(@.type==\"InternalIP\")].address}",
    );
    assert_eq!(get(&c, "first", "{.status.podIP}"), node_ip);
    assert!(
        !c.agent_dir()
            .join("netns")
            .join(get(&c, "first", "{.metadata.uid}"))
            .exists(),
        "no namespace was made"
    );
    let (body, _) = curl(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(body, "Hello from wk!\n", "the pod serves on the host");

    // A second pod on the same port is refused, and says why.
    apply(&c, &web("second"));
    let mut last = String::new();
    let refused = eventually(LONG, || {
        last = get(
            &c,
            "second",
            "{.status.containerStatuses[0].lastState.terminated.message}{.status.containerStatuses[0].state.terminated.message}",
        );
        last.contains(&format!("port {port}"))
    });
    assert!(
        refused,
        "second pod: {last}\n{}",
        get(&c, "second", "{.status}")
    );
    let (body, _) = curl(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(body, "Hello from wk!\n", "the first pod still serves");
}

/// How many of the pods `uids` hold an address with a veth named after themselves (rather
/// than one that came with a spare namespace); each must hold one.
fn pods_with_own_veth(c: &Cluster, uids: &[String]) -> usize {
    let records = c.address_records();
    let held: Vec<&String> = records.iter().map(|(_, h, _)| h).collect();
    assert!(uids.iter().all(|u| held.contains(&u)), "{records:?}");
    records
        .iter()
        .filter(|(_, holder, link)| {
            uids.contains(holder)
                && *link
                    == format!(
                        "wkv{}",
                        holder.replace('-', "").get(..12).unwrap_or_default()
                    )
        })
        .count()
}

#[test]
fn without_spare_sandboxes_pods_are_connected_when_they_come() {
    let c = Cluster::with_agent_args(&["--spare-sandboxes", "0"]);
    import_all(&c);
    let names = ["own-a", "own-b"];
    for name in names {
        apply(
            &c,
            &pod(
                name,
                "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n",
            ),
        );
    }
    let mut ips = Vec::new();
    for name in names {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
        ips.push(get(&c, name, "{.status.podIP}"));
    }
    let uids: Vec<String> = names
        .iter()
        .map(|n| get(&c, n, "{.metadata.uid}"))
        .collect();
    assert_eq!(pods_with_own_veth(&c, &uids), 2);
    assert_eq!(c.address_records().len(), 2, "no spare holds an address");
    assert_eq!(count_dir(c.agent_dir().join("netns-spare")), 0);
    let (body, _) = curl(&format!("http://{}:8000/", ips[1]));
    assert_eq!(body, "Hello from wk!\n");
    let (body, ok) = curl_in(&c, "own-b", &format!("http://{}:8000/", ips[0]));
    assert!(
        ok && body.starts_with("Hello from wk!"),
        "own-b to own-a: {body}"
    );
}

#[test]
fn pods_get_addresses_on_the_node_bridge_and_reach_each_other() {
    let c = Cluster::with_agent();
    import_all(&c);
    let bridge = c.bridge.clone().unwrap();
    let range = c.jsonpath("node", "wk-test", "{.spec.podCIDR}");
    let prefix = format!("{}.", bridge.prefix);
    assert_eq!(
        range,
        format!("{prefix}0.0/24"),
        "the node's share of the cluster CIDR"
    );
    assert_eq!(
        c.jsonpath("node", "wk-test", "{.status.allocatable.pods}"),
        "253",
        "no more pods than the podCIDR has addresses"
    );
    // Four pods at once: the first take the namespaces the agent keeps connected ahead of
    // need (two), the others are connected when they come.
    let names = ["net-a", "net-b", "net-c", "net-d"];
    let manifests: Vec<String> = names
        .iter()
        .map(|name| pod(
            name,
            "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n    env:\n    - name: MY_IP\n      valueFrom: {fieldRef: {fieldPath: status.podIP}}\n",
        ))
        .collect();
    apply(&c, &manifests.join("---\n"));
    let mut ips = Vec::new();
    for name in names {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
        let ip = get(&c, name, "{.status.podIP}");
        assert!(ip.starts_with(&format!("{prefix}0.")), "{name}: {ip}");
        assert_eq!(get(&c, name, "{.status.podIPs[0].ip}"), ip);
        // The guest sees its own address through the downward API.
        let (body, _) = curl_in(&c, name, "http://127.0.0.1:8000/env/MY_IP");
        assert!(body.starts_with(&ip), "{name}: {body}");
        ips.push(ip);
    }
    let unique: std::collections::HashSet<&String> = ips.iter().collect();
    assert_eq!(unique.len(), 4, "{ips:?}");
    let wide = c.kubectl_ok(&["get", "pods", "-o", "wide"]);
    assert!(ips.iter().all(|ip| wide.contains(ip)), "{wide}");
    // The host reaches every pod through the bridge, and each pod reaches the next.
    for (i, name) in names.iter().enumerate() {
        let (body, _) = curl(&format!("http://{}:8000/", ips[i]));
        assert_eq!(body, "Hello from wk!\n", "{name}");
        let next = &ips[(i + 1) % 4];
        let (body, ok) = curl_in(&c, name, &format!("http://{next}:8000/env/MY_IP"));
        assert!(
            ok && body.starts_with(next.as_str()),
            "{name} to {next}: {body}"
        );
    }
    assert_eq!(c.pod_ports().len(), 4, "{:?}", bridge.ports());
    // A veth named after its pod was made when the pod came; one named after a spare came
    // with the namespace, made ahead.
    let uids: Vec<String> = names
        .iter()
        .map(|n| get(&c, n, "{.metadata.uid}"))
        .collect();
    let made_for_pod = pods_with_own_veth(&c, &uids);
    assert!(
        made_for_pod < 4,
        "no pod took a spare: {:?}",
        c.address_records()
    );

    // Deleting a pod removes its veth and frees its address.
    c.kubectl_ok(&["delete", "pod", "net-a", "--timeout=30s"]);
    assert!(
        eventually(LONG, || c.pod_ports().len() == 3),
        "{:?}",
        bridge.ports()
    );
    let records = c.agent_dir().join("net").join(range.replace('/', "_"));
    assert!(!records.join(&ips[0]).exists(), "the address was released");
    assert!(records.join(&ips[1]).exists());
    let out = Command::new("curl")
        .args(["-s", "-m", "3", &format!("http://{}:8000/", ips[0])])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nothing answers at a deleted pod's address"
    );
}

#[test]
fn huge_modules_and_trap_storms_hurt_only_their_own_pod() {
    let c = Cluster::with_agent_args(&["--max-module-size", "1"]);
    import_all(&c);
    // A module over the node's limit is refused before Cranelift sees it.
    let huge = tempfile::Builder::new().suffix(".wat").tempfile().unwrap();
    let data = "a".repeat(2 << 20);
    std::fs::write(
        huge.path(),
        format!("(module (memory (export \"memory\") 64) (data (i32.const 0) \"{data}\") (func (export \"_start\")))"),
    )
    .unwrap();
    guests::import(&c, huge.path(), "huge:v1");
    apply(
        &c,
        &pod(
            "huge",
            "  restartPolicy: Never\n  containers:\n  - {name: main, image: huge:v1}\n",
        ),
    );
    apply(
        &c,
        &pod(
            "web",
            "  containers:\n  - {name: hello, image: hello:v1, ports: [{containerPort: 8000}]}\n",
        ),
    );
    wait_for(
        &c,
        "huge",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerError",
    );
    let message = get(
        &c,
        "huge",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        message.contains("over this node's limit of 1 MiB"),
        "{message}"
    );

    // A storm of requests that trap the guest: each gets a 500, the pod keeps serving, and the
    // agent holds no more threads or files after than before.
    wait_for(&c, "web", "{.status.containerStatuses[0].ready}", "true");
    let (body, _) = curl_in(&c, "web", "http://127.0.0.1:8000/");
    assert_eq!(body, "Hello from wk!\n 200");
    let pid = c.pid();
    let (threads, fds) = (proc_count(pid, "task"), proc_count(pid, "fd"));
    let urls: Vec<String> = (0..300)
        .map(|_| "http://127.0.0.1:8000/trap".to_owned())
        .collect();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns(&c, "web").display()))
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n"])
        .args(&urls)
        .output()
        .unwrap();
    let codes = stdout(&out);
    assert_eq!(
        codes.lines().filter(|l| *l == "500").count(),
        300,
        "{codes}"
    );
    let (body, _) = curl_in(&c, "web", "http://127.0.0.1:8000/");
    assert_eq!(body, "Hello from wk!\n 200");
    assert_eq!(
        get(&c, "web", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    // Idle blocking-pool threads linger 10 s before they exit.
    assert!(eventually(Duration::from_secs(30), || proc_count(
        pid, "task"
    ) <= threads + 2));
    assert!(
        eventually(Duration::from_secs(10), || proc_count(pid, "fd") <= fds + 2),
        "fds grew from {fds} to {}",
        proc_count(pid, "fd")
    );
}

#[test]
fn a_full_node_rejects_pods_past_its_allocatable_count() {
    let c = Cluster::with_agent_args(&["--max-pods", "2"]);
    import_all(&c);
    assert_eq!(
        c.jsonpath("node", "wk-test", "{.status.allocatable.pods}"),
        "2"
    );
    for name in ["fits-1", "fits-2", "extra"] {
        apply(
            &c,
            &pod(
                name,
                "  containers:\n  - {name: main, image: cmd:v1, args: [sleep, \"600000\"]}\n",
            ),
        );
        if name != "extra" {
            wait_for(&c, name, "{.status.phase}", "Running");
        }
    }
    wait_for(&c, "extra", "{.status.reason}", "OutOfpods");
    assert_eq!(get(&c, "extra", "{.status.phase}"), "Failed");
    let message = get(&c, "extra", "{.status.message}");
    assert!(message.contains("used: 2, capacity: 2"), "{message}");
    // Nothing of it runs, and deleting it needs no agent work.
    assert!(
        !c.agent_dir()
            .join("pods")
            .join(get(&c, "extra", "{.metadata.uid}"))
            .exists()
    );
    c.kubectl_ok(&["delete", "pod", "extra", "--timeout=30s"]);
    // Room made by a deletion is used again.
    c.kubectl_ok(&["delete", "pod", "fits-1", "--timeout=30s"]);
    apply(
        &c,
        &pod(
            "later",
            "  containers:\n  - {name: main, image: cmd:v1, args: [sleep, \"600000\"]}\n",
        ),
    );
    wait_for(&c, "later", "{.status.phase}", "Running");
}

#[test]
fn a_second_agent_does_not_take_over_another_node_s_bridge() {
    let c = Cluster::with_agent();
    let bridge = c.bridge.clone().unwrap();
    let second = c.join_agent(
        "second",
        None,
        &["--agent-listen", "127.0.0.1:0", "--bridge", &bridge.name],
    );
    // The second node runs, without pod addresses, and says why; the first keeps its bridge.
    let log = second.log();
    assert!(
        log.contains("another agent uses it") && log.contains("--bridge"),
        "{log}"
    );
    let range = c.jsonpath("node", "second", "{.spec.podCIDR}");
    assert!(!range.is_empty());
    assert_ne!(range, c.jsonpath("node", "wk-test", "{.spec.podCIDR}"));
    assert_eq!(network_unavailable(&c, "second").0, "True");
}

/// The status and message of node `name`'s NetworkUnavailable condition.
fn network_unavailable(c: &Cluster, name: &str) -> (String, String) {
    let path = |field: &str| {
        c.jsonpath(
            "node",
            name,
            &format!("{{.status.conditions[?(@.type==\"NetworkUnavailable\")].{field}}}"),
        )
    };
    (path("status"), path("message"))
}

/// A link of the test's own in the host's namespace, deleted when dropped.
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[test]
fn a_pod_range_that_another_link_of_the_host_holds_is_refused_and_the_node_says_why() {
    let c = Cluster::with_agent();
    let bridge = c.bridge.clone().unwrap();
    let (status, message) = network_unavailable(&c, "wk-test");
    assert_eq!(status, "False", "{message}");
    assert!(message.contains(&bridge.name), "{message}");
    // The next node gets the cluster's second /24. Another network (a second cluster's
    // bridge, a VPN) holds an address of it on this host before that node's agent starts.
    let prefix = format!("{}.", bridge.prefix);
    let taken = format!("{prefix}1.7/24");
    let other = HostLink(format!("wkc{}", bridge.n));
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // One that an interrupted run left goes first.
    let _ = Command::new("ip").args(["link", "del", &other.0]).output();
    ip(&["link", "add", &other.0, "type", "bridge"]);
    ip(&["addr", "add", &taken, "dev", &other.0]);
    let own = format!("wks{}", bridge.n);
    // What the agents leave when they are killed: the service proxy's link, and a bridge if
    // the check failed.
    let _left = [HostLink(format!("{own}-svc")), HostLink(own.clone())];
    let second = c.join_agent(
        "second",
        None,
        &["--agent-listen", "127.0.0.1:0", "--bridge", &own],
    );
    assert_eq!(
        c.jsonpath("node", "second", "{.spec.podCIDR}"),
        format!("{prefix}1.0/24")
    );
    // The node runs without pod addresses and says why, in its log and on the Node.
    let mut seen = (String::new(), String::new());
    let said = eventually(LONG, || {
        seen = network_unavailable(&c, "second");
        seen.0 == "True"
    });
    assert!(said, "{seen:?}\n{}", second.log());
    let message = seen.1.clone();
    for part in [
        &format!("{prefix}1.0/24"),
        &taken,
        &other.0,
        "--cluster-cidr",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(second.log().contains(&taken), "{}", second.log());
    // Nothing was made for it: no bridge of its own holding the taken range.
    assert!(!std::path::Path::new("/sys/class/net").join(&own).exists());
    // So is a route to part of a range through another link: the third node gets the third /24.
    drop(second);
    ip(&["addr", "del", &taken, "dev", &other.0]);
    ip(&["link", "set", &other.0, "up"]);
    let route = format!("{prefix}2.128/25");
    ip(&["route", "add", &route, "dev", &other.0]);
    let third = c.join_agent(
        "third",
        None,
        &["--agent-listen", "127.0.0.1:0", "--bridge", &own],
    );
    let said = eventually(LONG, || {
        seen = network_unavailable(&c, "third");
        seen.0 == "True"
    });
    assert!(said, "{seen:?}\n{}", third.log());
    assert!(seen.1.contains(&route), "{}", seen.1);
    // A node whose bridge already holds its range keeps it across a restart when something
    // claims part of it later: its pods keep their network, and the log says what.
    drop(third);
    ip(&["addr", "add", &format!("{prefix}0.200/32"), "dev", &other.0]);
    let (status, data) = c.stop();
    assert!(status.success(), "{status}");
    // The harness removes a stopped cluster's bridge; a node's own restart keeps it.
    ip(&["link", "add", &bridge.name, "type", "bridge"]);
    let gateway = format!("{prefix}0.1/24");
    ip(&["addr", "add", &gateway, "dev", &bridge.name]);
    let c = Cluster::with_agent_in(data);
    let log = c.log();
    assert!(
        log.contains("kept for the pods") && log.contains(&format!("{prefix}0.200/32")),
        "{log}"
    );
    assert!(eventually(LONG, || network_unavailable(&c, "wk-test").0 == "False"));
}

#[test]
fn requests_past_the_nodes_instance_pool_wait_for_a_slot_instead_of_failing() {
    // Two pods allowed: the pool has its least, 16 slots; 48 slow requests at once need more.
    let c = Cluster::with_agent_args(&["--max-pods", "2"]);
    import_all(&c);
    apply(
        &c,
        &pod(
            "slow",
            "  containers:\n  - name: hello\n    image: hello:v1\n    ports: [{containerPort: 8000}]\n",
        ),
    );
    wait_for(&c, "slow", "{.status.containerStatuses[0].ready}", "true");
    let ip = get(&c, "slow", "{.status.podIP}");
    let url = format!("http://{ip}:8000/slow?ms=300");
    let answers: Vec<String> = (0..48)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let out = Command::new("curl")
                    .args(["-s", "-m", "30", "-w", " %{http_code}", &url])
                    .output()
                    .expect("run curl");
                stdout(&out)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let failed: Vec<&String> = answers.iter().filter(|a| !a.ends_with(" 200")).collect();
    assert!(
        failed.is_empty(),
        "{} of 48 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}
