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

/// Waits for a Deployment's rollout.
fn rollout(c: &Cluster, deployment: &str) {
    c.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        &format!("--timeout={}s", ROLLOUT.as_secs()),
    ]);
}

/// `kubectl wait --for=FOR WHAT`.
fn wait(c: &Cluster, condition: &str, what: &str) {
    c.kubectl_ok(&[
        "wait",
        &format!("--for={condition}"),
        what,
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
    // The same program through the incomingHandler front end, for instance reuse.
    let reusable = run(&dir, "npm", &["run", "build:reusable"]);
    assert!(reusable.contains("hello-reusable.wasm"), "{reusable}");
    // A program that uses the rest of what the prelude gives (tests/js/node-api.js), built
    // with each front end.
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/node-api.js");
    let api_wasm = work.path().join("api.wasm");
    let api_reusable_wasm = work.path().join("api-reusable.wasm");
    for (flag, out) in [(None, &api_wasm), (Some("--reusable"), &api_reusable_wasm)] {
        let mut args = vec!["build.mjs"];
        args.extend(flag);
        args.extend([api.to_str().unwrap(), out.to_str().unwrap()]);
        run(&dir, "node", &args);
    }
    // Top-level code runs at build time: a call that stops the engine there gets a hint and a
    // position in the program, not only a trap.
    for (line, said) in [
        (
            "const id = Math.random();",
            "Make them in the request handler",
        ),
        ("setTimeout(() => {}, 1);", "broken.js:2:"),
    ] {
        let broken = work.path().join("broken.js");
        std::fs::write(
            &broken,
            format!("// started\n{line}\nrequire('http').createServer((q, r) => r.end('x')).listen(8000);\n"),
        )
        .unwrap();
        let out = Command::new("node")
            .args(["build.mjs", broken.to_str().unwrap()])
            .arg(work.path().join("broken.wasm"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(said), "{line}: {err}");
        assert!(!err.contains("wasm backtrace"), "{err}");
    }

    let registry = Registry::start();
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.81"]);
    let image = |tag: &str| format!("{}/hello-js:{tag}", registry.addr);
    for (file, tag) in [
        (dir.join("hello.wasm"), "v1"),
        (v2_wasm, "v2"),
        (dir.join("fetch.wasm"), "fetch"),
        (dir.join("hello-reusable.wasm"), "reusable"),
        (api_wasm, "api"),
        (api_reusable_wasm, "api-reusable"),
    ] {
        c.wk_ok(&["push", file.to_str().unwrap(), &image(tag)]);
    }

    // The seed's manifests, pointed at this test's registry.
    let manifests = std::fs::read_to_string(dir.join("hello.yaml")).unwrap();
    assert!(manifests.contains("image: 127.0.0.1:5000/hello-js:v1"));
    c.kubectl_apply(&manifests.replace("127.0.0.1:5000", &registry.addr));
    rollout(&c, "hello");
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
    rollout(&c, "hello");
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
    rollout(&c, "hello");

    c.kubectl_ok(&[
        "set",
        "image",
        "deployment/hello",
        &format!("hello={}", image("v2")),
    ]);
    rollout(&c, "hello");
    assert!(answers(url, "Hello again, Kubernetes!"), "{:?}", curl(url));
    c.kubectl_ok(&["rollout", "undo", "deployment/hello"]);
    rollout(&c, "hello");
    assert!(answers(url, "Hello Kubernetes!"), "{:?}", curl(url));
    // The misuse was reported at build time, not at every request.
    let logs = c.kubectl_ok(&["logs", "deployment/hello"]);
    assert!(!logs.contains("writeHead"), "{logs}");

    // The reusable build serves many requests in one instance; the fetch-event builds cannot,
    // and wk says so and serves them with a fresh instance per request.
    let pod = |name: &str, tag: &str, reuse: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n  annotations: {{wk.dev/instance-reuse: \"{reuse}\"}}\nspec:\n  containers:\n  - {{name: hello, image: \"{}\", ports: [{{containerPort: 8000}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector: {{app: {name}}}\n  ports:\n  - {{port: 8200, targetPort: 8000}}\n",
            image(tag)
        )
    };
    // The request's method, URL, headers and body reach the program, and its status, headers
    // and writes reach the client, through either front end, and on a reused instance as on a
    // fresh one: nothing of one request is left in the next.
    for (name, reuse) in [("api", 1), ("api-reusable", 1000)] {
        c.kubectl_apply(&pod(name, name, reuse));
        wait(&c, "condition=Ready", &format!("pod/{name}"));
        let port = c.jsonpath("svc", name, "{.spec.ports[0].nodePort}");
        let call = |args: &[&str], path: &str| {
            let out = Command::new("curl")
                .args(["-s", "-i", "-m", "10"])
                .args(args)
                .arg(format!("http://127.0.0.81:{port}{path}"))
                .output()
                .unwrap();
            stdout(&out).replace("\r\n", "\n").to_lowercase()
        };
        for _ in 0..3 {
            let post = call(&["-d", "ping", "-A", "tester"], "/echo?q=1");
            assert!(post.starts_with("http/1.1 201"), "{post}");
            for line in [
                "x-method: post\n",
                "x-agent: tester\n",
                "content-type: text/plain\n",
            ] {
                assert!(post.contains(line), "{line:?} in {post}");
            }
            assert!(post.ends_with("\n\npost /echo?q=1 1.1 ping"), "{post}");
            let get = call(&[], "/other");
            assert!(get.starts_with("http/1.1 200"), "{get}");
            assert!(get.contains("x-method: get\n"), "{get}");
            assert!(!get.contains("x-agent"), "{get}");
            assert!(get.ends_with("\n\nget /other 1.1"), "{get}");
        }
    }

    for (name, tag) in [
        ("reused", "reusable"),
        ("fetch", "fetch"),
        ("default", "v1"),
    ] {
        c.kubectl_apply(&pod(name, tag, 1000));
        wait(&c, "condition=Ready", &format!("pod/{name}"));
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
    for name in ["fetch", "default"] {
        let logs = c.kubectl_ok(&["logs", name]);
        assert!(
            logs.contains("wk.dev/instance-reuse refused"),
            "{name}: {logs}"
        );
    }
    // The prelude says which build to use instead, and ends the instance so that wk knows at
    // once, rather than after the reuse trial's wait (fetch.js, without the prelude, waits).
    let default = c.kubectl_ok(&["logs", "default"]);
    assert!(default.contains("build with --reusable"), "{default}");
    assert!(
        default.contains("the guest exited with status 1"),
        "{default}"
    );
    assert!(!default.contains("did not answer"), "{default}");
    let fetch = c.kubectl_ok(&["logs", "fetch"]);
    assert!(fetch.contains("did not answer"), "{fetch}");
}

/// The Rust examples (examples/Cargo.toml), built once for wasm32-wasip2.
fn rust_example(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/examples");
        run(
            root,
            "cargo",
            &[
                "build",
                "--release",
                "--locked",
                "--manifest-path",
                "examples/Cargo.toml",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
                target.to_str().unwrap(),
            ],
        );
        target.join("wasm32-wasip2/release")
    });
    dir.join(format!("{name}.wasm"))
}

/// A cluster and a registry holding the Rust examples' images, as their READMEs push them.
fn with_rust_images(node_ip: &str, images: &[(&str, &str)]) -> (Registry, Cluster) {
    let registry = Registry::start();
    let c = Cluster::with_agent_args(&["--node-ip", node_ip]);
    for (file, image) in images {
        let file = rust_example(file);
        c.wk_ok(&[
            "push",
            file.to_str().unwrap(),
            &format!("{}/{image}", registry.addr),
        ]);
    }
    (registry, c)
}

/// An example's manifest, pointed at this test's registry.
fn manifest(registry: &Registry, path: &str) -> String {
    let text = std::fs::read_to_string(example(path)).unwrap();
    assert!(text.contains("127.0.0.1:5000/"), "{path} names no image");
    text.replace("127.0.0.1:5000", &registry.addr)
}

fn pod_ip(c: &Cluster, selector: &str) -> String {
    c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])
}

#[test]
fn hello_rust_serves_through_its_node_port() {
    let (registry, c) = with_rust_images("127.0.0.82", &[("hello_rust", "hello-rust:v1")]);
    c.kubectl_apply(&manifest(&registry, "hello-rust/hello.yaml"));
    rollout(&c, "hello-rust");
    let url = "http://127.0.0.82:30081/";
    assert!(answers(url, "Hello from Rust on wk!"), "{:?}", curl(url));
}

#[test]
fn the_primes_job_completes_three_indexes_and_the_cronjob_runs_on_demand() {
    let (registry, c) = with_rust_images("127.0.0.1", &[("primes", "primes:v1")]);
    c.kubectl_apply(&manifest(&registry, "job/job.yaml"));
    wait(&c, "condition=Complete", "job/primes");
    let logs = c.kubectl_ok(&["logs", "-l", "job-name=primes", "--prefix=false"]);
    for index in 0..3 {
        assert!(
            logs.contains(&format!("primes below 200000: 17984 (index {index})")),
            "{logs}"
        );
    }
    c.kubectl_apply(&manifest(&registry, "job/cronjob.yaml"));
    c.kubectl_ok(&[
        "create",
        "job",
        "--from=cronjob/primes-nightly",
        "primes-now",
    ]);
    wait(&c, "condition=Complete", "job/primes-now");
    let logs = c.kubectl_ok(&["logs", "job/primes-now"]);
    assert_eq!(logs.trim(), "primes below 1000000: 78498");
}

#[test]
fn the_mixed_pod_runs_busybox_with_runc_beside_the_wasm_web_container() {
    let (registry, c) = with_rust_images("127.0.0.1", &[("hello_rust", "hello-rust:v1")]);
    run(
        &example("mixed"),
        "./busybox-image.sh",
        &[&format!("{}/busybox:1", registry.addr)],
    );
    c.kubectl_apply(&manifest(&registry, "mixed/mixed.yaml"));
    wait(&c, "condition=Ready", "pod/mixed");
    assert!(
        eventually(Duration::from_secs(60), || {
            c.kubectl_ok(&["logs", "mixed", "-c", "shell"])
                .contains("web answered: written by busybox, tick")
        }),
        "{}",
        c.kubectl_ok(&["logs", "mixed", "-c", "shell"])
    );
    let ids = c.kubectl_ok(&[
        "get",
        "pod",
        "mixed",
        "-o",
        "jsonpath={.status.containerStatuses[*].containerID}",
    ]);
    assert!(
        ids.starts_with("wasm://") && ids.contains(" runc://"),
        "{ids}"
    );
}

#[test]
fn the_sidecar_and_the_web_container_share_localhost_and_a_volume() {
    let (registry, c) = with_rust_images(
        "127.0.0.1",
        &[("hello_rust", "hello-rust:v1"), ("sidecar", "sidecar:v1")],
    );
    c.kubectl_apply(&manifest(&registry, "sidecar/sidecar.yaml"));
    wait(&c, "condition=Ready", "pod/sidecar");
    assert!(
        eventually(Duration::from_secs(60), || {
            c.kubectl_ok(&["logs", "sidecar", "-c", "sidecar"])
                .contains("web answered: written by the sidecar, tick")
        }),
        "{}",
        c.kubectl_ok(&["logs", "sidecar", "-c", "sidecar"])
    );
    let ip = c.jsonpath("pod", "sidecar", "{.status.podIP}");
    let (body, _) = curl(&format!("http://{ip}:8000/file/shared/message.txt"));
    assert!(body.starts_with("written by the sidecar, tick"), "{body}");
}

#[test]
fn config_reaches_the_pods_as_env_and_files_and_a_change_rolls_out() {
    let (registry, c) = with_rust_images("127.0.0.1", &[("hello_rust", "hello-rust:v1")]);
    c.kubectl_apply(&manifest(&registry, "config/config.yaml"));
    rollout(&c, "greeter");
    let ip = pod_ip(&c, "app=greeter");
    let get = |ip: &str, path: &str| curl(&format!("http://{ip}:8000{path}")).0;
    assert_eq!(get(&ip, "/"), "Hello from a ConfigMap!");
    assert!(
        get(&ip, "/file/etc/greeter/settings.ini").contains("colour = blue"),
        "{}",
        get(&ip, "/file/etc/greeter/settings.ini")
    );
    assert_eq!(
        get(&ip, "/file/etc/greeter-secret/token"),
        "not-a-real-token"
    );
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "greeter",
        "-p",
        r#"{"data": {"GREETING": "Hello again!"}}"#,
    ]);
    c.kubectl_ok(&["rollout", "restart", "deployment/greeter"]);
    rollout(&c, "greeter");
    assert!(
        eventually(Duration::from_secs(60), || get(
            &pod_ip(&c, "app=greeter"),
            "/"
        ) == "Hello again!"),
        "{}",
        get(&pod_ip(&c, "app=greeter"), "/")
    );
}

#[test]
fn hello_python_is_built_with_componentize_py_and_serves_reused_instances() {
    let dir = example("hello-python");
    run(&dir, "./build.sh", &[]);
    let registry = Registry::start();
    let c = Cluster::with_agent_args(&["--node-ip", "127.0.0.84"]);
    c.wk_ok(&[
        "push",
        dir.join("hello.wasm").to_str().unwrap(),
        &format!("{}/hello-python:v1", registry.addr),
    ]);
    c.kubectl_apply(&manifest(&registry, "hello-python/hello.yaml"));
    rollout(&c, "hello-python");
    let url = "http://127.0.0.84:30082/";
    assert!(answers(url, "Hello from Python on wk!"), "{:?}", curl(url));
    let logs = c.kubectl_ok(&["logs", "deployment/hello-python"]);
    assert!(!logs.contains("refused"), "{logs}");
}
