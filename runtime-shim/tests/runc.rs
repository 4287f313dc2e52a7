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
    for applet in ["sh", "cat", "grep", "id", "hostname", "echo"] {
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
