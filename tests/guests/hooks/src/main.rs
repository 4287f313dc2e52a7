//! wasi:cli/command component (wasm32-wasip2) that also exports wk's hooks
//! (`wk:pod/lifecycle@0.1.0`, `wk:pod/health@0.1.0`, world `command-hooks` in
//! the repo's `wit/wk.wit`). All paths live in a directory preopened at `/state`.
//!
//!   main (wasi:cli/run)  print `started`, then poll `/state/stop` every 50 ms;
//!                        once it exists print `stopping` and exit 0
//!   lifecycle.pre-stop   write `requested` to `/state/stop`, print
//!                        `pre-stop called`, Ok; a write error -> Err(text)
//!   health.check         Err("unhealthy flag set") if `/state/unhealthy`
//!                        exists, else Ok
//!
//! The host calls the exports in a *fresh* instance (main never ran there), so
//! pre-stop talks to the running instance only through the file. std's fs works
//! there too: wasi-libc resolves the preopens lazily on the first path lookup,
//! and wasm-ld / wit-bindgen run the static constructors before an export.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "command-hooks",
});

const STOP: &str = "/state/stop";
const UNHEALTHY: &str = "/state/unhealthy";

struct Hooks;

export!(Hooks);

impl exports::wk::pod::lifecycle::Guest for Hooks {
    fn pre_stop() -> Result<(), String> {
        std::fs::write(STOP, "requested").map_err(|e| format!("write {STOP}: {e}"))?;
        println!("pre-stop called");
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

impl exports::wk::pod::health::Guest for Hooks {
    fn check() -> Result<(), String> {
        if Path::new(UNHEALTHY).exists() {
            Err("unhealthy flag set".to_string())
        } else {
            Ok(())
        }
    }
}

fn main() {
    println!("started");
    let _ = std::io::stdout().flush();
    while !Path::new(STOP).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopping");
    let _ = std::io::stdout().flush();
}
