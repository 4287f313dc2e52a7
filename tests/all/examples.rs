//! The examples in examples/, built with their own tools and run the way their READMEs say: an
//! example that rots fails here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::agent::curl;
use crate::harness::{Cluster, eventually, stderr, stdout};
use crate::registry::Registry;

/// How long a rollout of a JS component may take: the first start compiles 13 MB of Wasm.
const ROLLOUT: Duration = Duration::from_secs(300);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Runs a command in `dir`, failing the test with its output if it fails; returns stdout.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}\n{}",
        dir.display(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `npm ci`, unless node_modules already holds what package-lock.json pins (a rerun).
fn npm_ci(dir: &Path) {
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&installed) < modified(&dir.join("package-lock.json")) {
        run(dir, "npm", &["ci", "--no-audit", "--no-fund"]);
    }
}

fn rollout(c: &Cluster) {
    c.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/hello",
        &format!("--timeout={}s", ROLLOUT.as_secs()),
    ]);
}

/// Waits until every one of ten requests to `url` answers `body`.
fn answers(url: &str, body: &str) -> bool {
    eventually(ROLLOUT, || (0..10).all(|_| curl(url).0 == body))
}

#[test]
fn hello_js_is_built_with_npm_pushed_applied_scaled_rolled_out_and_back() {
    let dir = example("hello-js");
    npm_ci(&dir);
    // The documented build: hello.js unchanged, with the prelude. The seed's end() before
    // writeHead() is reported once, here.
    let built = run(&dir, "npm", &["run", "build"]);
    assert_eq!(
        built
            .matches("calls resp.end() before resp.writeHead()")
            .count(),
        1,
        "{built}"
    );
    let work = tempfile::tempdir().unwrap();
    let v2 = work.path().join("hello.js");
    let program = std::fs::read_to_string(dir.join("hello.js")).unwrap();
    assert!(program.contains("'Hello Kubernetes!'"));
    std::fs::write(
        &v2,
        program.replace("'Hello Kubernetes!'", "'Hello again, Kubernetes!'"),
    )
    .unwrap();
    let v2_wasm = work.path().join("hello-v2.wasm");
    run(
        &dir,
        "node",
        &["build.mjs", v2.to_str().unwrap(), v2_wasm.to_str().unwrap()],
    );
    run(&dir, "npm", &["run", "build:fetch"]);

    let registry = Registry::start();
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.81"]);
    let image = |tag: &str| format!("{}/hello-js:{tag}", registry.addr);
    for (file, tag) in [
        (dir.join("hello.wasm"), "v1"),
        (v2_wasm, "v2"),
        (dir.join("fetch.wasm"), "fetch"),
    ] {
        c.wk_ok(&["push", file.to_str().unwrap(), &image(tag)]);
    }

    // The seed's manifests, pointed at this test's registry.
    let manifests = std::fs::read_to_string(dir.join("hello.yaml")).unwrap();
    assert!(manifests.contains("image: 127.0.0.1:5000/hello-js:v1"));
    c.kubectl_apply(&manifests.replace("127.0.0.1:5000", &registry.addr));
    rollout(&c);
    let url = "http://127.0.0.81:30080/";
    assert!(answers(url, "Hello Kubernetes!"), "{:?}", curl(url));
    assert_eq!(
        c.jsonpath(
            "svc",
            "hello-svc",
            "{.spec.ports[0].port}:{.spec.ports[0].targetPort}"
        ),
        "8200:8000"
    );

    c.kubectl_ok(&["scale", "deployment/hello", "--replicas", "3"]);
    rollout(&c);
    assert!(
        eventually(ROLLOUT, || {
            c.jsonpath("endpoints", "hello-svc", "{.subsets[*].addresses[*].ip}")
                .split_whitespace()
                .count()
                == 3
        }),
        "{}",
        c.kubectl_ok(&["get", "pods", "-o", "wide"])
    );
    assert!(answers(url, "Hello Kubernetes!"));
    c.kubectl_ok(&["scale", "deployment/hello", "--replicas", "1"]);
    rollout(&c);

    c.kubectl_ok(&[
        "set",
        "image",
        "deployment/hello",
        &format!("hello={}", image("v2")),
    ]);
    rollout(&c);
    assert!(answers(url, "Hello again, Kubernetes!"), "{:?}", curl(url));
    c.kubectl_ok(&["rollout", "undo", "deployment/hello"]);
    rollout(&c);
    assert!(answers(url, "Hello Kubernetes!"), "{:?}", curl(url));
    // The misuse was reported at build time, not at every request.
    let logs = c.kubectl_ok(&["logs", "deployment/hello"]);
    assert!(!logs.contains("writeHead"), "{logs}");

    // The prelude's handler serves many requests in one instance; the fetch-event variant
    // cannot, and wk says so and serves it with a fresh instance per request.
    let pod = |name: &str, tag: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n  annotations: {{wk.dev/instance-reuse: \"1000\"}}\nspec:\n  containers:\n  - {{name: hello, image: \"{}\", ports: [{{containerPort: 8000}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector: {{app: {name}}}\n  ports:\n  - {{port: 8200, targetPort: 8000}}\n",
            image(tag)
        )
    };
    for (name, tag) in [("reused", "v1"), ("fetch", "fetch")] {
        c.kubectl_apply(&pod(name, tag));
        c.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            &format!("--timeout={}s", ROLLOUT.as_secs()),
        ]);
        let port = c.jsonpath("svc", name, "{.spec.ports[0].nodePort}");
        let url = format!("http://127.0.0.81:{port}/");
        assert!(
            answers(&url, "Hello Kubernetes!"),
            "{name}: {:?}",
            curl(&url)
        );
    }
    let reused = c.kubectl_ok(&["logs", "reused"]);
    assert!(!reused.contains("refused"), "{reused}");
    let fetch = c.kubectl_ok(&["logs", "fetch"]);
    assert!(fetch.contains("wk.dev/instance-reuse refused"), "{fetch}");
}
