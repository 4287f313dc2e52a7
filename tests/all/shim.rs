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
    "sh", "echo", "cat", "sleep", "wget", "id", "hostname", "ls", "true", "false", "trap",
];

/// A tar layer of a busybox root: /bin/busybox from Debian's busybox-static and its applets,
/// /etc/passwd, /tmp.
fn busybox_layer() -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("busybox-static is installed (Debian busybox-static)");
    let mut tar = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar);
        let dir = |b: &mut tar::Builder<&mut Vec<u8>>, path: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        };
        dir(&mut b, "bin", 0o755);
        dir(&mut b, "etc", 0o755);
        dir(&mut b, "tmp", 0o1777);
        let mut h = tar::Header::new_gnu();
        h.set_size(busybox.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "bin/busybox", busybox.as_slice())
            .unwrap();
        for applet in APPLETS {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(passwd.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/passwd", passwd.as_slice())
            .unwrap();
        b.finish().unwrap();
    }
    tar
}

/// This machine's architecture as OCI platforms name it.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Pushes a busybox image (an index with this node's Linux entry and a foreign one) as
/// `REGISTRY/busybox:v1`; returns its reference.
fn push_busybox(reg: &Registry) -> String {
    let layout = Layout::new();
    let config = serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/bin", "FROM_IMAGE=yes"]});
    let linux = layout.image_of("linux", arch(), config, &[busybox_layer()]);
    let foreign = layout.image("linux", "s390x", "/bin/sh", b"\x7fELF not really");
    layout.top("v1", &[foreign, linux]);
    let reference = format!("{}/busybox:v1", reg.addr);
    layout.push("v1", &reference);
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
    wk_shim_built();
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let image = push_busybox(&reg);
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
    let logs = c.kubectl_ok(&["logs", "busy"]);
    assert_eq!(
        logs, "hello from busybox\nimage env yes\noops\nbusy\n0\n",
        "stdout and stderr, in the CRI log format kubectl reads"
    );
}

#[test]
fn a_wasm_container_and_a_busybox_sidecar_share_localhost_and_an_empty_dir() {
    wk_shim_built();
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let image = push_busybox(&reg);
    let r = &reg.addr;
    let out = c.wk(&[
        "push",
        guests::http_hello().to_str().unwrap(),
        &format!("{r}/hello:v1"),
    ]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    let out = c.wk(&[
        "push",
        guests::command_p2().to_str().unwrap(),
        &format!("{r}/cmd:v1"),
    ]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    apply(
        &c,
        &pod(
            "mixed",
            &format!(
                "  volumes: [{{name: shared, emptyDir: {{}}}}]
  containers:
  - name: web
    image: {r}/hello:v1
    ports: [{{containerPort: 8000}}]
  - name: side
    image: {image}
    command: [sh, -c]
    args: ['until wget -qO /shared/got http://127.0.0.1:8000/; do sleep 0.2; done; cat /shared/got; exec sleep 3600']
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: reader
    image: {r}/cmd:v1
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
}
