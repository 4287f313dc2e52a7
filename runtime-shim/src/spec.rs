//! The OCI runtime spec for one container: what runc is asked to run.
//!
//! Kubernetes' rules decide the process: `command` replaces the image's ENTRYPOINT and `args`
//! its CMD (a `command` without `args` drops CMD); env is the image's, then the container's;
//! `runAsUser`/`runAsGroup` win over the image's USER, whose names are looked up in the
//! image's own /etc/passwd and /etc/group. The container joins the pod's network namespace by
//! path and gets the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf, and its volumes.
//! It runs with Docker's default capabilities, no new privileges, masked /proc paths, and a
//! seccomp profile that refuses the system calls Docker's default profile refuses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why no spec could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image nor the container names a program.
    #[error("nothing to run: the image has no ENTRYPOINT or CMD and the container sets no command")]
    NoCommand,
    /// The user or group is a name the image's /etc/passwd or /etc/group lacks.
    #[error("user {0:?} is not in the image's /etc/passwd or /etc/group")]
    UnknownUser(String),
}

/// What the image's config says about running it (`config` in the OCI image config).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Image {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV, as `NAME=value`.
    pub env: Vec<String>,
    /// WORKDIR.
    pub working_dir: String,
    /// USER: `uid`, `uid:gid`, `name` or `name:group`.
    pub user: String,
}

impl Image {
    /// Reads the `config` object of an OCI image config (missing fields are empty).
    #[must_use]
    pub fn from_config(config: &Value) -> Self {
        let c = &config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
            user: c["User"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

/// A directory or file of the pod's that the container sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// On the node.
    pub host: PathBuf,
    /// In the container.
    pub path: String,
    /// Whether writes are refused.
    pub read_only: bool,
}

/// The container's own settings, resolved by the agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Container {
    /// `command`, when set.
    pub command: Option<Vec<String>>,
    /// `args`, when set.
    pub args: Option<Vec<String>>,
    /// env, in order, after the image's.
    pub env: Vec<(String, String)>,
    /// `workingDir`, when set.
    pub working_dir: Option<String>,
    /// `securityContext.runAsUser` (or the pod's).
    pub run_as_user: Option<u32>,
    /// `securityContext.runAsGroup` (or the pod's).
    pub run_as_group: Option<u32>,
    /// The pod's volumes this container mounts.
    pub mounts: Vec<Mount>,
    /// `limits.memory`, bytes.
    pub memory_limit: Option<u64>,
    /// `limits.cpu`, millicores.
    pub cpu_millis: Option<u64>,
    /// `securityContext.readOnlyRootFilesystem`.
    pub read_only_root: bool,
}

/// What the pod gives each of its containers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's network namespace (None: a namespace of the container's own).
    pub netns: Option<PathBuf>,
    /// The pod's host name.
    pub hostname: String,
    /// Files bound over the image's: /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: Vec<(String, PathBuf)>,
}

/// Docker's default capabilities.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The system calls Docker's default seccomp profile refuses a container without extra
/// capabilities; refused here with EPERM, everything else allowed.
const REFUSED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Looks `name` up in the image's /etc/passwd-style file, giving the uid (or gid) and, for
/// passwd, the primary gid.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    // The image's own file only: a symbolic link on the way (to the node's /etc/shadow, say)
    // would be followed on the node, outside the container.
    let mut path = rootfs.to_owned();
    for part in Path::new(file).components() {
        path.push(part);
        if std::fs::symlink_metadata(&path)
            .ok()?
            .file_type()
            .is_symlink()
        {
            return None;
        }
    }
    let text = std::fs::read_to_string(&path).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| {
            let id = fields.get(2)?.parse().ok()?;
            Some((id, fields.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

/// The uid and gid a USER string names in the image at `rootfs`.
fn image_user(rootfs: &Path, user: &str) -> Result<(u32, u32), SpecError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let unknown = || SpecError::UnknownUser(user.to_owned());
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => lookup(rootfs, "etc/passwd", u).ok_or_else(unknown)?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(rootfs, "etc/group", g).ok_or_else(unknown)?.0,
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The runtime spec for `container` of `pod`, from `image`, whose root filesystem is `rootfs`.
///
/// # Errors
/// [`SpecError`] when there is nothing to run or the user is unknown.
pub fn runtime_spec(
    image: &Image,
    container: &Container,
    pod: &Pod,
    rootfs: &Path,
) -> Result<Value, SpecError> {
    let args: Vec<String> = match (&container.command, &container.args) {
        (Some(command), args) => command
            .iter()
            .chain(args.iter().flatten())
            .cloned()
            .collect(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut env: Vec<String> = image.env.clone();
    for (name, value) in &container.env {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != name);
        env.push(format!("{name}={value}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        );
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", pod.hostname));
    }
    let (mut uid, mut gid) = image_user(rootfs, &image.user)?;
    if let Some(u) = container.run_as_user {
        uid = u;
    }
    if let Some(g) = container.run_as_group {
        gid = g;
    }
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    let bind = |host: &Path, path: &str, read_only: bool| {
        let mut options = vec!["rbind", "rprivate"];
        if read_only {
            options.push("ro");
        }
        json!({"destination": path, "type": "bind", "source": host, "options": options})
    };
    for (path, host) in &pod.etc_files {
        mounts.push(bind(host, path, false));
    }
    for m in &container.mounts {
        mounts.push(bind(&m.host, &m.path, m.read_only));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.push(match &pod.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(bytes) = container.memory_limit {
        resources["memory"] = json!({"limit": bytes});
    }
    if let Some(millis) = container.cpu_millis.filter(|m| *m > 0) {
        // A period of 100 ms, of which the container may use its share.
        resources["cpu"] = json!({"quota": millis * 100, "period": 100_000});
    }
    let seccomp = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": REFUSED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": container.read_only_root},
        "hostname": pod.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "seccomp": seccomp,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image::from_config(&json!({"config": {
            "Entrypoint": ["/bin/app"], "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "MODE=image"], "WorkingDir": "/srv", "User": "web"}}))
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        dir
    }

    #[test]
    fn command_and_args_follow_kubernetes_over_entrypoint_and_cmd() {
        let root = rootfs();
        let run = |command: Option<&[&str]>, args: Option<&[&str]>| {
            let c = Container {
                command: command.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
                args: args.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
                ..Container::default()
            };
            runtime_spec(&image(), &c, &Pod::default(), root.path()).unwrap()["process"]["args"]
                .clone()
        };
        assert_eq!(run(None, None), json!(["/bin/app", "--serve"]));
        assert_eq!(run(None, Some(&["--once"])), json!(["/bin/app", "--once"]));
        assert_eq!(run(Some(&["/bin/sh"]), None), json!(["/bin/sh"]));
        assert_eq!(
            run(Some(&["/bin/sh"]), Some(&["-c", "x"])),
            json!(["/bin/sh", "-c", "x"])
        );
        let empty = Image::default();
        assert_eq!(
            runtime_spec(&empty, &Container::default(), &Pod::default(), root.path()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn env_user_mounts_and_limits_come_through() {
        let root = rootfs();
        let c = Container {
            env: vec![("MODE".into(), "pod".into()), ("EXTRA".into(), "1".into())],
            mounts: vec![Mount {
                host: "/data/pods/u/volumes/cache".into(),
                path: "/cache".into(),
                read_only: true,
            }],
            memory_limit: Some(64 << 20),
            cpu_millis: Some(500),
            ..Container::default()
        };
        let pod = Pod {
            netns: Some("/data/netns/u".into()),
            hostname: "web-0".into(),
            etc_files: vec![("/etc/hosts".into(), "/data/pods/u/hosts".into())],
        };
        let spec = runtime_spec(&image(), &c, &pod, root.path()).unwrap();
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "MODE=pod", "EXTRA=1", "HOSTNAME=web-0"])
        );
        // USER web is uid 1000 with primary group 1001, from the image's own /etc/passwd.
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 1001}));
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        let mounts = spec["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/cache"
            && m["options"].as_array().unwrap().contains(&json!("ro"))));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
        assert!(
            spec["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network", "path": "/data/netns/u"}))
        );
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);

        let c = Container {
            run_as_user: Some(7),
            ..Container::default()
        };
        let named_group = Image {
            user: "web:staff".into(),
            ..image()
        };
        let spec = runtime_spec(&named_group, &c, &pod, root.path()).unwrap();
        assert_eq!(spec["process"]["user"], json!({"uid": 7, "gid": 50}));
        let stranger = Image {
            user: "nobody".into(),
            ..image()
        };
        assert_eq!(
            runtime_spec(&stranger, &Container::default(), &pod, root.path()),
            Err(SpecError::UnknownUser("nobody".into()))
        );
    }

    #[test]
    fn a_passwd_that_is_a_symbolic_link_is_not_followed_out_of_the_image() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "web:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        assert_eq!(
            runtime_spec(
                &image(),
                &Container::default(),
                &Pod::default(),
                root.path()
            ),
            Err(SpecError::UnknownUser("web".into()))
        );
    }
}
