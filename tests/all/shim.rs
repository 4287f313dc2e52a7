//! Linux containers through the container shim (`wk-shim`), with Debian's runc, driven by the
//! real kubectl: a busybox image made from Debian's `busybox-static`, pushed to the real
//! registry with skopeo, runs in a pod's sandbox next to Wasm containers.

use std::path::Path;

use crate::agent::{LONG, apply, get, pod, wait_for};
use crate::guests;
use crate::harness::{Cluster, eventually, stdout};
use crate::registry::{Layout, Registry};

/// The busybox applets the tests use, as links to the static busybox.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "wget", "id", "hostname", "ls", "true", "false", "nslookup",
];

/// The busybox layer the tests' image is made of (the benchmarks use the same).
fn busybox_layer() -> Vec<u8> {
    wk::bench::shim::busybox_layer(APPLETS).expect("busybox-static is installed")
}

/// Pushes a busybox image (an index with this node's Linux entry and a foreign one) as
/// `REGISTRY/busybox:v1`; returns its reference.
fn push_busybox(reg: &Registry) -> String {
    let layout = Layout::new();
    let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin", "FROM_IMAGE=yes"]});
    let linux = layout.image_of("linux", wk::arch(), config, &[busybox_layer()]);
    let foreign = layout.image("linux", "s390x", "/bin/sh", b"\x7fELF not really");
    layout.top("v1", &[foreign, linux]);
    let reference = format!("{}/busybox:v1", reg.addr);
    layout.push("v1", &reference);
    reference
}

/// A registry with the busybox image, and a cluster whose node runs Linux containers.
fn busybox_cluster() -> (Registry, Cluster, String) {
    wk_shim_built();
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let image = push_busybox(&reg);
    (reg, c, image)
}

/// Pushes a test guest as `REGISTRY/name`; returns the reference.
fn push_guest(c: &Cluster, reg: &Registry, file: &Path, name: &str) -> String {
    let reference = format!("{}/{name}", reg.addr);
    let out = c.wk(&["push", file.to_str().unwrap(), &reference]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    reference
}

fn wk_shim_built() {
    let shim = Path::new(env!("CARGO_BIN_EXE_wk")).with_file_name("wk-shim");
    assert!(
        shim.is_file(),
        "{} is missing: build the workspace (cargo build --workspace), as scripts/test does",
        shim.display()
    );
}

#[test]
fn a_busybox_pod_logs_and_exits_zero_under_runc() {
    let (reg, c, image) = busybox_cluster();
    apply(
        &c,
        &pod(
            "busy",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c]\n    args: ['echo \"hello from $(WHO)\"; echo \"image env $FROM_IMAGE\"; echo oops >&2; hostname; id -u']\n    env: [{{name: WHO, value: busybox}}]\n"
            ),
        ),
    );
    wait_for(&c, "busy", "{.status.phase}", "Succeeded");
    assert_eq!(
        get(
            &c,
            "busy",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    assert!(get(&c, "busy", "{.status.containerStatuses[0].containerID}").starts_with("runc://"),);
    assert!(
        get(&c, "busy", "{.status.containerStatuses[0].imageID}")
            .starts_with(&format!("{}/busybox@sha256:", reg.addr)),
    );
    // stdout and stderr, in the CRI log format kubectl reads. They are separate pipes, so
    // stderr's line may land anywhere among stdout's, as with the kubelet.
    let logs = c.kubectl_ok(&["logs", "busy"]);
    let stdout_lines: Vec<&str> = logs.lines().filter(|l| *l != "oops").collect();
    assert_eq!(
        stdout_lines,
        ["hello from busybox", "image env yes", "busy", "0"],
        "{logs}"
    );
    assert_eq!(logs.lines().filter(|l| *l == "oops").count(), 1, "{logs}");

    // The RuntimeClasses: runc selects nodes that run Linux containers, and forces runc.
    let classes = c.kubectl_ok(&["get", "runtimeclass"]);
    assert!(
        classes
            .lines()
            .any(|l| l.starts_with("runc ") && l.contains(" runc "))
            && classes.lines().any(|l| l.starts_with("wasmtime ")),
        "{classes}"
    );
    let sleeper = |name: &str, class: &str| {
        pod(
            name,
            &format!(
                "  runtimeClassName: {class}\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n    command: [\"true\"]\n"
            ),
        )
    };
    apply(&c, &sleeper("classy", "runc"));
    assert_eq!(
        get(&c, "classy", "{.spec.nodeSelector.wk\\.dev/runc}"),
        "true"
    );
    wait_for(&c, "classy", "{.status.phase}", "Succeeded");
    apply(&c, &sleeper("mismatched", "wasmtime"));
    wait_for(
        &c,
        "mismatched",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerError",
    );
    assert!(
        get(
            &c,
            "mismatched",
            "{.status.containerStatuses[0].state.waiting.message}"
        )
        .contains("runtimeClassName \"wasmtime\" does not run"),
    );
    // A CPU limit is a cgroup quota, and kubectl top reads the container's cgroup.
    apply(
        &c,
        &pod(
            "spin",
            &format!(
                "  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, 'while true; do :; done']\n    resources: {{limits: {{cpu: 200m, memory: 64Mi}}}}\n"
            ),
        ),
    );
    let (top, used, memory) = crate::agent::busy_top(&c, "spin");
    assert!(
        used <= 400,
        "a 200m limit holds the spinning shell near 200m, not a core: {top}"
    );
    assert!(memory.ends_with("Mi"), "{top}");

    let refused = c.kubectl_stdin(&["apply", "-f", "-"], &sleeper("classless", "nothere"));
    assert!(!refused.status.success());
    assert!(
        crate::harness::stderr(&refused).contains("RuntimeClass \"nothere\" not found"),
        "{}",
        crate::harness::stderr(&refused)
    );
}

#[test]
fn a_node_without_the_shim_says_why_and_its_linux_pods_wait_while_wasm_runs() {
    let reg = Registry::start();
    let c = Cluster::with_agent_args(&["--container-shim", "/nonexistent/wk-shim"]);
    let image = push_busybox(&reg);
    let condition = c.kubectl_ok(&[
        "get",
        "node",
        "wk-test",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"LinuxContainers\")].status} {.status.conditions[?(@.type==\"LinuxContainers\")].message}",
    ]);
    assert!(
        condition.starts_with("False ") && condition.contains("/nonexistent/wk-shim"),
        "{condition}"
    );
    assert_eq!(
        c.jsonpath("node", "wk-test", "{.metadata.labels.wk\\.dev/runc}"),
        ""
    );
    apply(
        &c,
        &pod(
            "busy",
            &format!("  containers:\n  - name: main\n    image: {image}\n"),
        ),
    );
    wait_for(
        &c,
        "busy",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "RuntimeUnavailable",
    );
    let cmd = push_guest(&c, &reg, guests::command_p2(), "cmd:v1");
    apply(
        &c,
        &pod(
            "wasm",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: main\n    image: {cmd}\n    args: [exit, \"0\"]\n"
            ),
        ),
    );
    wait_for(&c, "wasm", "{.status.phase}", "Succeeded");
}

#[test]
fn a_wasm_container_and_a_busybox_sidecar_share_localhost_and_an_empty_dir() {
    let (reg, c, image) = busybox_cluster();
    let hello = push_guest(&c, &reg, guests::http_hello(), "hello:v1");
    let cmd = push_guest(&c, &reg, guests::command_p2(), "cmd:v1");
    apply(
        &c,
        &pod(
            "mixed",
            &format!(
                "  volumes: [{{name: shared, emptyDir: {{}}}}]
  containers:
  - name: web
    image: {hello}
    ports: [{{containerPort: 8000}}]
  - name: side
    image: {image}
    command: [sh, -c]
    args: ['until wget -qO /shared/got http://127.0.0.1:8000/; do sleep 0.2; done; cat /shared/got; exec sleep 3600']
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: reader
    image: {cmd}
    args: [read, /data/got, --wait-ms, '60000']
    volumeMounts: [{{name: shared, mountPath: /data}}]
"
            ),
        ),
    );
    let mut logs = String::new();
    let ok = eventually(LONG, || {
        logs = stdout(&c.kubectl(&["logs", "mixed", "-c", "side"]));
        logs.contains("Hello from wk!")
    });
    assert!(ok, "the sidecar's wget of the Wasm container: {logs:?}");
    // The Wasm reader sees the file the Linux sidecar wrote to the shared emptyDir.
    let ok = eventually(LONG, || {
        logs = stdout(&c.kubectl(&["logs", "mixed", "-c", "reader"]));
        logs.contains("Hello from wk!")
    });
    assert!(ok, "the Wasm reader's view of the emptyDir: {logs:?}");
    // kubectl exec reaches the Linux container, and says why not for a Wasm one.
    let out = c.kubectl(&["exec", "mixed", "-c", "side", "--", "cat", "/shared/got"]);
    assert_eq!(
        stdout(&out),
        "Hello from wk!\n",
        "{}",
        crate::harness::stderr(&out)
    );
    let out = c.kubectl(&["exec", "mixed", "-c", "web", "--", "ls"]);
    assert!(!out.status.success());
    assert!(
        crate::harness::stderr(&out).contains("is a Wasm container"),
        "{}",
        crate::harness::stderr(&out)
    );
}

#[test]
fn linux_containers_stop_gracefully_restart_on_failure_and_refuse_escaping_layers() {
    let (reg, c, image) = busybox_cluster();
    let out = tempfile::tempdir().unwrap();
    let host = out.path().display();
    let looping = |name: &str, grace: u32, trap: &str| {
        pod(
            name,
            &format!(
                "  terminationGracePeriodSeconds: {grace}\n  volumes: [{{name: out, hostPath: {{path: {host}, type: Directory}}}}]\n  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c]\n    args: ['{trap}; echo up > /out/{name}-up; while true; do sleep 1; done']\n    volumeMounts: [{{name: out, mountPath: /out}}]\n    readinessProbe: {{exec: {{command: [cat, /out/{name}-up]}}, periodSeconds: 1}}\n"
            ),
        )
    };
    // SIGTERM reaches the container's process, which exits by itself well within its grace.
    apply(
        &c,
        &looping(
            "polite",
            60,
            "trap \"echo got TERM > /out/polite-term; exit 0\" TERM",
        ),
    );
    // A process that ignores SIGTERM is killed when the grace period is over.
    apply(&c, &looping("stubborn", 2, "trap \"\" TERM"));
    // A container that fails is restarted, with the previous run's logs kept.
    apply(
        &c,
        &pod(
            "crashy",
            &format!(
                "  restartPolicy: OnFailure\n  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, 'echo run; exit 3']\n"
            ),
        ),
    );
    // Ready through the exec probe (runc exec), once the file it reads is there.
    for name in ["polite", "stubborn"] {
        wait_for(&c, name, "{.status.containerStatuses[0].ready}", "true");
        assert!(out.path().join(format!("{name}-up")).exists());
    }
    c.kubectl_ok(&["delete", "pod", "polite", "--timeout=30s"]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("polite-term")).unwrap(),
        "got TERM\n"
    );
    c.kubectl_ok(&["delete", "pod", "stubborn", "--timeout=30s"]);
    assert!(!out.path().join("stubborn-term").exists());

    let mut restarts = 0;
    assert!(eventually(LONG, || {
        restarts = get(&c, "crashy", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .unwrap_or(0);
        restarts >= 1
    }));
    assert_eq!(
        get(
            &c,
            "crashy",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(
        c.kubectl_ok(&["logs", "crashy", "--previous"]),
        "run\n",
        "the previous run's log"
    );

    // A layer with an entry that climbs out of the root is refused, naming the entry.
    let layout = Layout::new();
    let mut tar = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar);
        let mut h = tar::Header::new_gnu();
        let name = b"../../escaped";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
        b.finish().unwrap();
    }
    let config = serde_json::json!({"Cmd": ["/bin/sh"]});
    let bad = layout.image_of("linux", wk::arch(), config, &[busybox_layer(), tar]);
    layout.top("v1", &[bad]);
    layout.push("v1", &format!("{}/escape:v1", reg.addr));
    apply(
        &c,
        &pod(
            "escape",
            &format!(
                "  containers:\n  - name: main\n    image: {}/escape:v1\n",
                reg.addr
            ),
        ),
    );
    wait_for(
        &c,
        "escape",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "CreateContainerError",
    );
    let message = get(
        &c,
        "escape",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        message.contains("../../escaped") && message.contains("escapes the root filesystem"),
        "{message}"
    );
    assert!(!c.agent_dir().join("escaped").exists());
    assert!(!c.agent_dir().parent().unwrap().join("escaped").exists());
}

#[test]
fn a_killed_agent_s_running_container_is_adopted_by_the_next_one() {
    let (_reg, c, image) = busybox_cluster();
    apply(
        &c,
        &pod(
            "ticker",
            &format!(
                "  containers:\n  - name: main\n    image: {image}\n    command: [sh, -c, 'echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done']\n"
            ),
        ),
    );
    wait_for(&c, "ticker", "{.status.containerStatuses[0].ready}", "true");
    assert!(eventually(LONG, || c
        .kubectl_ok(&["logs", "ticker"])
        .contains("tick 2")));
    let uid = get(&c, "ticker", "{.metadata.uid}");
    let init_pid = |dir: &Path| -> u32 {
        std::fs::read_to_string(dir.join(format!("pods/{uid}/shim/main/init.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let pid = init_pid(&c.agent_dir());
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();

    let data = c.kill();
    assert!(alive(pid), "the container outlives its agent");
    let c = Cluster::with_agent_in(data);
    wait_for(&c, "ticker", "{.status.containerStatuses[0].ready}", "true");
    assert_eq!(init_pid(&c.agent_dir()), pid, "the same container, adopted");
    assert!(alive(pid));
    assert_eq!(
        get(&c, "ticker", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let before = c.kubectl_ok(&["logs", "ticker"]).lines().count();
    assert!(eventually(LONG, || c
        .kubectl_ok(&["logs", "ticker"])
        .lines()
        .count()
        > before + 1));
    let logs = c.kubectl_ok(&["logs", "ticker"]);
    assert_eq!(
        logs.matches("started").count(),
        1,
        "started once, its log kept: {logs}"
    );
    // kubectl exec (a WebSocket through the API server to the agent, then runc exec) into
    // the adopted container: both streams, the exit code, and stdin.
    let out = c.kubectl(&[
        "exec",
        "ticker",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(stdout(&out), "out\n");
    assert!(
        crate::harness::stderr(&out).starts_with("err\n"),
        "{}",
        crate::harness::stderr(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "kubectl exits with the command's code: {}",
        crate::harness::stderr(&out)
    );
    let out = c.kubectl_stdin(&["exec", "-i", "ticker", "--", "cat"], "through stdin\n");
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    assert_eq!(stdout(&out), "through stdin\n");
    // The container resolves cluster names through cluster DNS, by the resolv.conf the pod
    // mounts (the search path makes `kubernetes.default` whole).
    let service_ip = c.jsonpath("service", "kubernetes", "{.spec.clusterIP}");
    let resolv = c.kubectl_ok(&["exec", "ticker", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    let looked_up = c.kubectl(&["exec", "ticker", "--", "nslookup", "kubernetes.default"]);
    assert!(
        stdout(&looked_up).contains(&service_ip),
        "{} {}",
        stdout(&looked_up),
        crate::harness::stderr(&looked_up)
    );
    let out = c.kubectl(&["exec", "ticker", "-c", "nothere", "--", "true"]);
    assert!(
        crate::harness::stderr(&out).contains("container nothere is not valid for pod ticker"),
        "{}",
        crate::harness::stderr(&out)
    );
    c.kubectl_ok(&["delete", "pod", "ticker", "--timeout=60s"]);
    assert!(!alive(pid), "deleting the pod stops the adopted container");
    assert!(crate::harness::shims_of(&c.agent_dir()).is_empty());
}
