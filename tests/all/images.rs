//! Images from a real OCI registry (Debian's `docker-registry`): every Wasm packaging in use,
//! digests, tampering, credentials, pull policies and one pull for many pods. Artifacts are
//! pushed with `wk push`, and with `skopeo` as an independent tool.

use crate::agent::{LONG, apply, curl_in, get, pod, wait_for};
use crate::guests;
use crate::harness::{Cluster, eventually, stderr, stdout};
use crate::registry::{Layout, Registry, digest};

/// `wk push FILE REF [flags]`; returns the `repo@digest` it prints.
fn push(c: &Cluster, file: &std::path::Path, reference: &str, flags: &[&str]) -> String {
    let mut args = vec!["push", file.to_str().unwrap(), reference];
    args.extend_from_slice(flags);
    c.wk_ok(&args).trim().to_owned()
}

/// A command pod that runs `image` once and prints its arguments.
fn command_pod(name: &str, image: &str, extra: &str) -> String {
    pod(
        name,
        &format!(
            "  restartPolicy: Never\n{extra}  containers:\n  - name: main\n    image: {image}\n    args: [env-args, {name}]\n"
        ),
    )
}

fn events(c: &Cluster, name: &str) -> String {
    stdout(&c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
    ]))
}

fn wait_for_event(c: &Cluster, name: &str, want: &str) -> String {
    let mut last = String::new();
    let ok = eventually(LONG, || {
        last = events(c, name);
        last.contains(want)
    });
    assert!(ok, "pod {name}: no event {want:?} in\n{last}");
    last
}

#[test]
fn pods_run_from_every_wasm_packaging_and_foreign_platforms_are_named() {
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let r = &reg.addr;
    let cncf = push(&c, guests::http_hello(), &format!("{r}/hello:v1"), &[]);
    let old = push(
        &c,
        guests::command_p1(),
        &format!("{r}/cmd:old"),
        &["--format", "wasm-to-oci"],
    );
    let runwasi = push(
        &c,
        guests::command_p2(),
        &format!("{r}/cmd:runwasi"),
        &["--format", "runwasi"],
    );
    // A wasi/wasm platform image, and an index with a Linux and a wasi entry, both pushed by
    // skopeo from OCI layouts.
    let wasm = std::fs::read(guests::command_p1()).unwrap();
    let layout = Layout::new();
    let single = layout.image("wasip1", "wasm", "/bin/cmd.wasm", &wasm);
    layout.top("v1", std::slice::from_ref(&single));
    layout.push("v1", &format!("{r}/platform:v1"));
    let multi = Layout::new();
    let linux = multi.image("linux", "amd64", "/bin/sh", b"\x7fELF not really");
    let wasi = multi.image("wasi", "wasm", "/app/cmd.wasm", &wasm);
    multi.top("v1", &[linux.clone(), wasi]);
    multi.push("v1", &format!("{r}/multi:v1"));
    let only_linux = Layout::new();
    // Linux images for platforms no test machine is: named, with what the node runs.
    let l = only_linux.image("linux", "s390x", "/bin/sh", b"\x7fELF not really");
    let risc = only_linux.image("linux", "riscv64", "/bin/sh", b"\x7fELF not really");
    only_linux.top("v1", &[l, risc]);
    only_linux.push("v1", &format!("{r}/busybox:v1"));

    apply(
        &c,
        &pod(
            "web",
            &format!(
                "  containers:\n  - name: hello\n    image: {r}/hello:v1\n    ports: [{{containerPort: 8000}}]\n"
            ),
        ),
    );
    for (name, image) in [
        ("old", format!("{r}/cmd:old")),
        ("runwasi", format!("{r}/cmd:runwasi")),
        ("platform", format!("{r}/platform:v1")),
        ("multi", format!("{r}/multi:v1")),
    ] {
        apply(&c, &command_pod(name, &image, ""));
    }
    apply(&c, &command_pod("linux", &format!("{r}/busybox:v1"), ""));

    wait_for(&c, "web", "{.status.containerStatuses[0].ready}", "true");
    let (body, ok) = curl_in(&c, "web", "http://127.0.0.1:8000/");
    assert!(ok && body == "Hello from wk!\n 200", "{body}");
    assert_eq!(
        get(&c, "web", "{.status.containerStatuses[0].imageID}"),
        cncf
    );
    for name in ["old", "runwasi", "platform", "multi"] {
        wait_for(&c, name, "{.status.phase}", "Succeeded");
        let logs = c.kubectl_ok(&["logs", name]);
        assert!(logs.contains(&format!("arg[2]={name}")), "{name}: {logs}");
    }
    assert_eq!(
        get(&c, "old", "{.status.containerStatuses[0].imageID}"),
        old
    );
    assert_eq!(
        get(&c, "runwasi", "{.status.containerStatuses[0].imageID}"),
        runwasi
    );
    assert_eq!(
        get(&c, "platform", "{.status.containerStatuses[0].imageID}"),
        format!("{r}/platform@{}", single["digest"].as_str().unwrap())
    );
    let ev = wait_for_event(
        &c,
        "linux",
        "linux/s390x, linux/riscv64; this node runs wasi/wasm or linux/",
    );
    assert!(ev.contains("ErrImagePull"), "{ev}");
    assert!(
        get(&c, "multi", "{.status.containerStatuses[0].imageID}")
            .starts_with(&format!("{r}/multi@sha256:")),
    );
    let ev = events(&c, "web");
    assert!(
        ev.contains(&format!("Pulling image \"{r}/hello:v1\""))
            && ev.contains("Successfully pulled image"),
        "{ev}"
    );

    // The Node lists what it pulled, by digest and by tag.
    let mut images = String::new();
    assert!(
        eventually(LONG, || {
            images = node_image_names(&c);
            images.contains(&cncf) && images.contains(&format!("{r}/hello:v1"))
        }),
        "{images}"
    );
    // `wk image ls` on the node shows them with their format.
    let dir = c.agent_dir();
    let ls = c.wk_ok(&["image", "ls", "--data-dir", dir.to_str().unwrap()]);
    for want in [
        "CNCF Wasm artifact",
        "wasm-to-oci artifact",
        "runwasi component image",
        "wasi/wasm image",
    ] {
        assert!(ls.contains(want), "{want} in {ls}");
    }
    let dir = dir.to_str().unwrap();
    let rm = c.wk_ok(&["image", "rm", "--data-dir", dir, &format!("{r}/cmd:old")]);
    assert!(rm.contains(old.rsplit('@').next().unwrap()), "{rm}");
    let ls = c.wk_ok(&["image", "ls", "--data-dir", dir]);
    assert!(!ls.contains("wasm-to-oci"), "{ls}");
    let out = c.wk(&["image", "rm", "--data-dir", dir, "nothing:here"]);
    assert!(!out.status.success() && stderr(&out).contains("no image nothing:here"));
}

#[test]
fn digest_pins_hold_and_a_tampered_blob_is_refused_and_not_kept() {
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let r = &reg.addr;
    let pinned = push(&c, guests::command_p1(), &format!("{r}/cmd:v1"), &[]);
    apply(&c, &command_pod("pinned", &pinned, ""));
    wait_for(&c, "pinned", "{.status.phase}", "Succeeded");
    assert_eq!(
        get(&c, "pinned", "{.status.containerStatuses[0].imageID}"),
        pinned
    );

    // A digest no manifest has: not found, never other bytes.
    let absent = format!("{r}/cmd@{}", digest(b"no such manifest"));
    apply(&c, &command_pod("absent", &absent, ""));
    wait_for_event(&c, "absent", "manifest unknown");

    // Corrupt the layer in the registry's storage: same size, other bytes.
    let wasm = std::fs::read(guests::command_p2()).unwrap();
    let layer = digest(&wasm);
    push(&c, guests::command_p2(), &format!("{r}/bad:v1"), &[]);
    let file = reg.blob_file(&layer);
    let mut tampered = std::fs::read(&file).unwrap();
    let at = tampered.len() / 2;
    tampered[at] ^= 0xff;
    std::fs::write(&file, &tampered).unwrap();
    apply(&c, &command_pod("tampered", &format!("{r}/bad:v1"), ""));
    let ev = wait_for_event(&c, "tampered", "digest mismatch");
    let actual = digest(&tampered);
    assert!(
        ev.contains(&layer) && ev.contains(&actual),
        "names both digests: {ev}"
    );
    assert!(ev.contains("Error: ErrImagePull"), "{ev}");
    let content = c.agent_dir().join("content/sha256");
    for hex in [&layer, &actual].map(|d| d.trim_start_matches("sha256:").to_owned()) {
        assert!(!content.join(&hex).exists(), "{hex} was kept");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&content)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.len() != 64)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let index = std::fs::read_to_string(c.agent_dir().join("images/index.json")).unwrap();
    assert!(!index.contains("bad:v1"), "{index}");
}

#[test]
fn credentials_from_login_and_pull_secrets_and_clear_refusals() {
    let reg = Registry::with_auth("wkuser", "s3cret");
    let c = Cluster::with_agent();
    let r = reg.addr.clone();
    let image = format!("{r}/private:v1");

    let out = c.wk(&["push", guests::command_p1().to_str().unwrap(), &image]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = c.wk_stdin(
        &["registry", "login", &r, "-u", "wkuser", "--password-stdin"],
        "wrong\n",
    );
    assert!(!out.status.success(), "a wrong password is refused");
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = c.wk_stdin(
        &["registry", "login", &r, "-u", "wkuser", "--password-stdin"],
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    push(&c, guests::command_p1(), &image, &[]);
    let pulled = c.wk_ok(&["pull", &image]);
    assert!(
        pulled.contains("CNCF Wasm artifact") && pulled.contains("(module,"),
        "{pulled}"
    );

    apply(&c, &command_pod("anonymous", &image, ""));
    let ev = wait_for_event(&c, "anonymous", "unauthorized");
    assert!(
        ev.contains(&format!("registry {r} refused the credentials")),
        "{ev}"
    );

    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={r}"),
        "--docker-username=wkuser",
        "--docker-password=s3cret",
    ]);
    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "wrongcred",
        &format!("--docker-server={r}"),
        "--docker-username=wkuser",
        "--docker-password=nope",
    ]);
    apply(
        &c,
        &command_pod(
            "with-secret",
            &image,
            "  imagePullSecrets: [{name: regcred}]\n",
        ),
    );
    wait_for(&c, "with-secret", "{.status.phase}", "Succeeded");
    apply(
        &c,
        &command_pod(
            "wrong-secret",
            &format!("{r}/private:v1"),
            "  imagePullSecrets: [{name: wrongcred}, {name: missing}]\n",
        ),
    );
    // IfNotPresent: the image is on the node now, so even a wrong secret starts it, as with
    // the kubelet. A tag the node does not have must be pulled, and is refused.
    wait_for(&c, "wrong-secret", "{.status.phase}", "Succeeded");
    apply(
        &c,
        &command_pod(
            "wrong-secret-2",
            &format!("{r}/private:v2"),
            "  imagePullSecrets: [{name: wrongcred}, {name: missing}]\n",
        ),
    );
    let ev = wait_for_event(&c, "wrong-secret-2", "unauthorized");
    assert!(
        ev.contains("FailedToRetrieveImagePullSecret") && ev.contains("missing"),
        "{ev}"
    );

    // The node's own credentials, from registries.yaml, serve pods without secrets.
    push(&c, guests::command_p2(), &format!("{r}/private:v3"), &[]);
    std::fs::write(
        c.agent_dir().join("registries.yaml"),
        format!(
            "configs:\n  \"{r}\":\n    auth:\n      username: wkuser\n      password: s3cret\n"
        ),
    )
    .unwrap();
    apply(
        &c,
        &command_pod("node-creds", &format!("{r}/private:v3"), ""),
    );
    wait_for(&c, "node-creds", "{.status.phase}", "Succeeded");
}

#[test]
fn if_not_present_needs_no_registry_and_a_missing_tag_backs_off() {
    let mut reg = Registry::start();
    let c = Cluster::with_agent();
    let r = reg.addr.clone();
    let image = format!("{r}/cmd:v1");
    push(&c, guests::command_p1(), &image, &[]);
    apply(&c, &command_pod("first", &image, ""));
    wait_for(&c, "first", "{.status.phase}", "Succeeded");
    assert_eq!(reg.requests("GET", "/v2/cmd/manifests/v1"), 1);

    apply(&c, &command_pod("nope", &format!("{r}/cmd:nope"), ""));
    wait_for(
        &c,
        "nope",
        "{.status.containerStatuses[0].state.waiting.reason}",
        "ImagePullBackOff",
    );
    let msg = get(
        &c,
        "nope",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        msg.contains("Back-off pulling image") && msg.contains("manifest unknown"),
        "{msg}"
    );
    let ev = events(&c, "nope");
    assert!(
        ev.contains("Error: ErrImagePull") && ev.contains("BackOff"),
        "{ev}"
    );

    // A mirror from registries.yaml, over plain HTTP, stands in for a registry that does not
    // resolve.
    std::fs::write(
        c.agent_dir().join("registries.yaml"),
        format!("mirrors:\n  mirror.invalid:\n    endpoint: [\"http://{r}\"]\n"),
    )
    .unwrap();
    apply(&c, &command_pod("mirrored", "mirror.invalid/cmd:v1", ""));
    wait_for(&c, "mirrored", "{.status.phase}", "Succeeded");
    let id = get(&c, "mirrored", "{.status.containerStatuses[0].imageID}");
    assert!(id.starts_with("mirror.invalid/cmd@sha256:"), "{id}");
    assert!(
        reg.log().contains("?ns=mirror.invalid"),
        "the mirror is asked with ns="
    );

    reg.stop();
    apply(&c, &command_pod("second", &image, ""));
    wait_for(&c, "second", "{.status.phase}", "Succeeded");
    apply(
        &c,
        &command_pod("always", &image, "")
            .replace("    args:", "    imagePullPolicy: Always\n    args:"),
    );
    let ev = wait_for_event(&c, "always", "cannot reach registry");
    assert!(ev.contains(&r), "{ev}");
}

#[test]
fn twenty_pods_of_one_image_make_one_pull() {
    let reg = Registry::start();
    let c = Cluster::with_agent();
    let image = format!("{}/many:v1", reg.addr);
    push(&c, guests::command_p1(), &image, &[]);
    let layer = digest(&std::fs::read(guests::command_p1()).unwrap());
    let manifests: Vec<String> = (0..20)
        .map(|i| command_pod(&format!("many-{i}"), &image, ""))
        .collect();
    apply(&c, &manifests.join("---\n"));
    for i in 0..20 {
        wait_for(&c, &format!("many-{i}"), "{.status.phase}", "Succeeded");
    }
    assert_eq!(
        reg.requests("GET", "/v2/many/manifests/v1"),
        1,
        "{}",
        reg.log()
    );
    assert_eq!(reg.requests("GET", &format!("/v2/many/blobs/{layer}")), 1);
}

/// A copy of a Wasm file padded with a custom section to `size` bytes (still valid).
fn padded(file: &std::path::Path, size: usize, dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join(format!("padded-{size}.wasm"));
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(&out, wk::bench::images::pad_wasm(&bytes, size, 1)).unwrap();
    out
}

/// The names in the Node's `status.images`.
fn node_image_names(c: &Cluster) -> String {
    c.kubectl_ok(&[
        "get",
        "node",
        "wk-test",
        "-o",
        "jsonpath={.status.images[*].names}",
    ])
}

#[test]
fn unused_images_are_collected_and_layers_over_the_limit_refused() {
    let reg = Registry::start();
    let c = Cluster::with_agent_args(&[
        "--image-gc-high-threshold",
        "0",
        "--image-gc-low-threshold",
        "0",
        "--image-minimum-gc-age",
        "0s",
        "--max-module-size",
        "1",
    ]);
    let r = &reg.addr;
    let scratch = tempfile::tempdir().unwrap();
    let big = padded(guests::command_p1(), 3 << 20, scratch.path());
    push(&c, &big, &format!("{r}/big:v1"), &[]);
    apply(&c, &command_pod("big", &format!("{r}/big:v1"), ""));
    let ev = wait_for_event(&c, "big", "over the limit of 1048576 bytes");
    assert!(ev.contains("--max-module-size"), "{ev}");

    let used = push(&c, guests::http_hello(), &format!("{r}/kept:v1"), &[]);
    let done = push(&c, guests::command_p1(), &format!("{r}/gone:v1"), &[]);
    apply(
        &c,
        &pod(
            "kept",
            &format!(
                "  containers:\n  - name: hello\n    image: {r}/kept:v1\n    ports: [{{containerPort: 8000}}]\n"
            ),
        ),
    );
    apply(&c, &command_pod("done", &format!("{r}/gone:v1"), ""));
    wait_for(&c, "kept", "{.status.containerStatuses[0].ready}", "true");
    wait_for(&c, "done", "{.status.phase}", "Succeeded");
    let index = c.agent_dir().join("images/index.json");
    let wasm = digest(&std::fs::read(guests::command_p1()).unwrap());
    let content = c.agent_dir().join("content/sha256");
    assert!(content.join(wasm.trim_start_matches("sha256:")).exists());
    c.kubectl_ok(&["delete", "pod", "done"]);
    let mut text = String::new();
    assert!(
        eventually(LONG, || {
            text = std::fs::read_to_string(&index).unwrap_or_default();
            !text.contains(&done) && !text.contains("gone:v1")
        }),
        "the unused image stays: {text}"
    );
    let done_digest = done.rsplit('@').next().unwrap().to_owned();
    assert!(!text.contains(&done_digest), "{text}");
    assert!(
        text.contains(used.rsplit('@').next().unwrap()),
        "the running pod's image is kept: {text}"
    );
    assert!(
        !content.join(wasm.trim_start_matches("sha256:")).exists(),
        "its blobs are gone"
    );
    let mut images = String::new();
    assert!(
        eventually(LONG, || {
            images = node_image_names(&c);
            !images.contains("gone") && images.contains(&used)
        }),
        "{images}"
    );
}

#[test]
fn bearer_token_registries_work_with_login_and_pull_secrets() {
    let (reg, tokens) = Registry::with_token_auth("wkuser", "s3cret");
    let c = Cluster::with_agent();
    let r = reg.addr.clone();
    let image = format!("{r}/tokened:v1");
    let out = c.wk_stdin(
        &["registry", "login", &r, "-u", "wkuser", "--password-stdin"],
        "wrong\n",
    );
    assert!(!out.status.success(), "a wrong password is refused");
    assert!(
        stderr(&out).contains("token service refused"),
        "{}",
        stderr(&out)
    );
    let out = c.wk_stdin(
        &["registry", "login", &r, "-u", "wkuser", "--password-stdin"],
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    push(&c, guests::command_p1(), &image, &[]);
    apply(&c, &command_pod("no-token", &image, ""));
    let ev = wait_for_event(&c, "no-token", "token service refused");
    assert!(ev.contains("Error: ErrImagePull"), "{ev}");
    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "tokencred",
        &format!("--docker-server={r}"),
        "--docker-username=wkuser",
        "--docker-password=s3cret",
    ]);
    apply(
        &c,
        &command_pod("token", &image, "  imagePullSecrets: [{name: tokencred}]\n"),
    );
    wait_for(&c, "token", "{.status.phase}", "Succeeded");
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}
