//! The generated spec, run by the real runc (Debian's `runc`) on a busybox root filesystem
//! (Debian's `busybox-static`).

use std::path::Path;
use std::process::Command;

use wk_shim::rootfs::writable_root;
use wk_shim::spec::{Container, Image, Mount, Pod, runtime_spec};

/// Docker's default capabilities, as /proc/self/status shows the bounding set (a non-root
/// process has none effective).
const DOCKER_CAPS: &str = "00000000a80425fb";

fn rootfs(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for applet in ["sh", "cat", "grep", "id", "hostname", "echo", "dd"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nbusy:x:4242:4343::/:/bin/sh\n",
    )
    .unwrap();
}

/// Releases the container's root even when the test fails, so that no mount is left behind.
struct Released(Option<wk_shim::rootfs::Writable>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.release().expect("release the container's root");
        }
    }
}

#[test]
fn busybox_runs_under_runc_with_the_generated_spec() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let image_root = dir.path().join("image");
    rootfs(&image_root);
    // The container's own writable root over the image's.
    let writable = Released(Some(writable_root(&image_root, &bundle, true).unwrap()));
    let root = writable.0.as_ref().unwrap().root.clone();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let hostname_file = dir.path().join("hostname");
    std::fs::write(&hostname_file, "busy-pod\n").unwrap();

    let image = Image::from_config(&serde_json::json!({"config": {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo the image's CMD"],
        "Env": ["GREETING=from the image"],
        "User": "busy"}}));
    let container = Container {
        args: Some(vec![
            "echo \"$GREETING\"; id -u; hostname; cat /etc/hostname; \
             grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; echo written > /data/out; \
             echo mine > /tmp/mine"
                .into(),
        ]),
        env: vec![("GREETING".into(), "hello from runc".into())],
        mounts: vec![Mount {
            host: volume.clone(),
            path: "/data".into(),
            read_only: false,
        }],
        memory_limit: Some(64 << 20),
        ..Container::default()
    };
    let pod = Pod {
        netns: None,
        hostname: "busy-pod".into(),
        etc_files: vec![("/etc/hostname".into(), hostname_file)],
    };
    let spec = runtime_spec(&image, &container, &pod, &root).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let id = format!("wk-shim-test-{}", std::process::id());
    let out = Command::new("runc")
        .arg("--root")
        .arg(dir.path().join("state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .expect("runc is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runc failed: {stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello from runc", "{stdout}");
    assert_eq!(
        lines[1], "4242",
        "USER busy from the image's /etc/passwd: {stdout}"
    );
    assert_eq!(lines[2], "busy-pod", "{stdout}");
    assert_eq!(lines[3], "busy-pod", "{stdout}");
    assert!(
        stdout.contains(&format!("CapBnd:\t{DOCKER_CAPS}")),
        "{stdout}"
    );
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(volume.join("out")).unwrap(),
        "written\n"
    );
    // What the container wrote in its root is its own, not the image's.
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/mine")).unwrap(),
        "mine\n"
    );
    assert!(!image_root.join("tmp/mine").exists());
    drop(writable);
    assert!(!bundle.exists());
}

/// Runs `wk-shim run` on a bundle for `container` over a busybox image; returns how it ended
/// and the log file's text.
fn shim_run(container: Container) -> (wk_shim::supervise::Ended, String) {
    let dir = tempfile::tempdir().unwrap();
    let image_root = dir.path().join("image");
    rootfs(&image_root);
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let log = dir.path().join("logs/0.log");
    let request = wk_shim::supervise::Request {
        id: format!("wk-shim-run-{}-{}", std::process::id(), rand_suffix()),
        runc: "runc".into(),
        runc_root: dir.path().join("state"),
        image: Image::default(),
        image_root,
        container,
        pod: Pod {
            hostname: "shim-test".into(),
            ..Pod::default()
        },
        log: log.clone(),
        overlay: true,
    };
    std::fs::write(
        bundle.join(wk_shim::supervise::REQUEST),
        serde_json::to_vec(&request).unwrap(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wk-shim"))
        .arg("run")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: wk_shim::supervise::Ended =
        serde_json::from_slice(&std::fs::read(bundle.join(wk_shim::supervise::ENDED)).unwrap())
            .unwrap();
    // The container's root is released and runc forgot the container.
    assert!(!bundle.join("fs").exists());
    let state = dir.path().join("state").join(&request.id);
    assert!(!state.exists(), "runc still has {}", state.display());
    (ended, std::fs::read_to_string(&log).unwrap_or_default())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sh(script: &str) -> Container {
    Container {
        command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        ..Container::default()
    }
}

#[test]
fn the_shim_logs_both_streams_and_reports_the_exit_code() {
    let (ended, log) = shim_run(sh("echo out; echo err >&2; printf 'no newline'; exit 3"));
    assert_eq!(ended.code, 3, "{ended:?}");
    assert!(!ended.oom);
    assert_eq!(ended.error, None);
    let records: Vec<(&str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, stream, tag, text) = (f.next(), f.next(), f.next(), f.next());
            (stream.unwrap(), tag.unwrap(), text.unwrap_or_default())
        })
        .collect();
    assert!(records.contains(&("stdout", "F", "out")), "{log}");
    assert!(records.contains(&("stderr", "F", "err")), "{log}");
    assert!(records.contains(&("stdout", "P", "no newline")), "{log}");
    let stamp = log.split(' ').next().unwrap();
    assert!(
        stamp.len() == 30 && stamp.ends_with('Z'),
        "RFC 3339 with nanoseconds: {stamp}"
    );
}

#[test]
fn the_shim_reports_an_oom_kill_and_a_program_that_is_not_there() {
    // dd's 64 MiB buffer does not fit in 16 MiB.
    let mut hog = sh("dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog.memory_limit = Some(16 << 20);
    let (ended, _) = shim_run(hog);
    assert!(ended.oom, "{ended:?}");
    assert_eq!(ended.code, 137, "{ended:?}");

    let missing = Container {
        command: Some(vec!["/bin/not-there".into()]),
        ..Container::default()
    };
    let (ended, _) = shim_run(missing);
    let error = ended.error.unwrap_or_default();
    assert!(error.contains("not-there"), "{error}");
}
