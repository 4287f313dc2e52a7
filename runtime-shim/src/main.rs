//! `wk-shim run BUNDLE`: supervises one Linux container for the wk agent (see
//! [`wk_shim::supervise`]). Its messages go to stderr, which the agent points at the bundle's
//! `shim.log`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.as_slice() {
        [_, cmd, bundle] if cmd == "run" => match wk_shim::supervise::run(bundle.as_ref()) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("wk-shim: {e}");
                1
            }
        },
        [_, v] if v == "--version" => {
            println!("wk-shim {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("usage: wk-shim run BUNDLE");
            2
        }
    };
    std::process::exit(code);
}
