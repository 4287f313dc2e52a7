//! The Wasm guests the agent tests run, built from source in tests/guests (once per test run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{Cluster, WK};

/// The wasip1 command module (`command` modes: env-args, exit, spin, alloc-mb...).
pub fn command_p1() -> &'static Path {
    &built().0
}

/// The same command as a wasi:cli component (wasip2; has sockets).
pub fn command_p2() -> &'static Path {
    &built().1
}

/// A command component exporting wk:pod/lifecycle and wk:pod/health.
pub fn hooks() -> PathBuf {
    root()
        .join("target/guests/wasm32-wasip2/release/hooks.wasm")
        .canonicalize()
        .unwrap_or_else(|_| {
            let _ = built();
            root().join("target/guests/wasm32-wasip2/release/hooks.wasm")
        })
}

/// The wasi:http hello component.
pub fn http_hello() -> &'static Path {
    &built().2
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn built() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = root().join("target").join("guests");
        let manifest = root().join("tests/guests/Cargo.toml");
        for (triple, package) in [("wasm32-wasip1", Some("command")), ("wasm32-wasip2", None)] {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--release", "--locked", "--target", triple])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target);
            if let Some(p) = package {
                cmd.args(["-p", p]);
            }
            let out = cmd.output().expect("run cargo for the guests");
            assert!(
                out.status.success(),
                "building the guests for {triple} failed (is the target installed? `rustup target add {triple}`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (
            target.join("wasm32-wasip1/release/command.wasm"),
            target.join("wasm32-wasip2/release/command.wasm"),
            target.join("wasm32-wasip2/release/http_hello.wasm"),
        )
    })
}

/// The WAT file `name` under tests/guests/wat.
pub fn wat(name: &str) -> PathBuf {
    root().join("tests/guests/wat").join(name)
}

/// Imports a module into the cluster's node as `name`.
pub fn import(c: &Cluster, file: &Path, name: &str) {
    import_to(&c.agent_dir(), file, name);
}

/// Imports a guest into the node whose agent data directory is `dir`.
pub fn import_to(dir: &Path, file: &Path, name: &str) {
    let out = Command::new(WK)
        .args(["image", "import"])
        .arg(file)
        .args(["--name", name, "--data-dir"])
        .arg(dir)
        .output()
        .expect("run wk image import");
    assert!(
        out.status.success(),
        "wk image import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Imports the standard guests as `cmd:v1`, `cmd2:v1` and `hello:v1`.
pub fn import_all(c: &Cluster) {
    import_all_to(&c.agent_dir());
}

/// Imports the standard guests into the node whose agent data directory is `dir`.
pub fn import_all_to(dir: &Path) {
    import_to(dir, command_p1(), "cmd:v1");
    import_to(dir, command_p2(), "cmd2:v1");
    import_to(dir, http_hello(), "hello:v1");
}
