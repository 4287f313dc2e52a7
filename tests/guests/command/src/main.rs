//! Multi-mode WASI command used by wk's integration tests.
//!
//! Builds for both `wasm32-wasip1` (core module) and `wasm32-wasip2`
//! (`wasi:cli/command` component). `argv[1]` selects the mode; `argv[0]` is
//! whatever the host passes. std only, no dependencies.
//!
//! Modes (see README.md for the full contract):
//!   env-args                      args as `arg[i]=..`, env as `env:K=V` (sorted), exit $EXIT_CODE
//!   ls DIR...                     `file:PATH:FIRST-LINE` for every file, recursively
//!   write PATH TEXT               write TEXT to PATH, print `wrote PATH`
//!   read PATH [--wait-ms N]       poll up to N ms for PATH, print contents (exit 2 if missing)
//!   sleep MS                      sleep, print `slept`
//!   print-loop N MS               print `line 1`..`line N`, MS ms apart
//!   exit CODE                     `exiting CODE` on stdout, `bye` on stderr, exit CODE
//!   spin                          busy-loop forever
//!   alloc-mb N                    allocate + touch N MiB (memory bomb for large N)
//!   recurse                       unbounded recursion -> stack overflow trap
//!   serve-tcp PORT REPLY          (wasip2) TCP line-echo server on 127.0.0.1:PORT
//!   connect-tcp PORT MSG [--retry-ms N]  (wasip2) TCP client, prints the reply line
//!   resolve NAME...               (wasip2) `NAME ADDR ADDR...` per name, or `NAME error: ...`
//!                                 (exit 2 if any name failed)

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::exit;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let rest = if args.len() > 2 { &args[2..] } else { &[][..] };
    let code = match mode {
        "env-args" => env_args(&args),
        "ls" => ls(rest),
        "write" => write(rest),
        "read" => read(rest),
        "sleep" => sleep(rest),
        "print-loop" => print_loop(rest),
        "exit" => exit_with(rest),
        "spin" => spin(),
        "alloc-mb" => alloc_mb(rest),
        "recurse" => {
            let n = recurse(black_box(0));
            println!("unreachable: {n}");
            0
        }
        "serve-tcp" => serve_tcp(rest),
        "connect-tcp" => connect_tcp(rest),
        "resolve" => resolve(rest),
        other => {
            eprintln!("error: unknown mode {other:?}");
            eprintln!(
                "usage: command <env-args|ls|write|read|sleep|print-loop|exit|spin|alloc-mb|recurse|serve-tcp|connect-tcp|resolve> ..."
            );
            64
        }
    };
    flush();
    // Return normally on success so a wasip2 host sees `wasi:cli/run` return
    // Ok(()) instead of an `exit(ok)` call (wasmtime: I32Exit(0)).
    if code != 0 {
        exit(code);
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

fn die(code: i32, msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    flush();
    code
}

fn arg<'a>(rest: &'a [String], i: usize, name: &str) -> Result<&'a str, String> {
    rest.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {name}"))
}

fn num<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("invalid {name}: {s:?}"))
}

/// Looks for `--flag N` anywhere in `rest`.
fn flag_ms(rest: &[String], flag: &str, default: u64) -> Result<u64, String> {
    match rest.iter().position(|a| a == flag) {
        None => Ok(default),
        Some(i) => num(arg(rest, i + 1, flag)?, flag),
    }
}

// ---------------------------------------------------------------- env-args

fn env_args(args: &[String]) -> i32 {
    for (i, a) in args.iter().enumerate() {
        println!("arg[{i}]={a}");
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (k, v) in &vars {
        println!("env:{k}={v}");
    }
    match std::env::var("EXIT_CODE") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| die(1, format!("invalid EXIT_CODE {s:?}"))),
        Err(_) => 0,
    }
}

// ---------------------------------------------------------------- ls

fn ls(dirs: &[String]) -> i32 {
    if dirs.is_empty() {
        return die(1, "ls: missing DIR");
    }
    let mut rc = 0;
    for d in dirs {
        if let Err(e) = walk(Path::new(d)) {
            rc = die(1, format!("ls {d}: {e}"));
        }
    }
    rc
}

fn walk(dir: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p)?;
        } else {
            let bytes = std::fs::read(&p)?;
            let text = String::from_utf8_lossy(&bytes);
            let first = text.lines().next().unwrap_or("");
            println!("file:{}:{first}", p.display());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- write / read

fn write(rest: &[String]) -> i32 {
    let run = || -> Result<(), String> {
        let path = arg(rest, 0, "PATH")?;
        let text = arg(rest, 1, "TEXT")?;
        std::fs::write(path, text).map_err(|e| format!("write {path}: {e}"))?;
        println!("wrote {path}");
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => die(1, e),
    }
}

fn read(rest: &[String]) -> i32 {
    let path = match arg(rest, 0, "PATH") {
        Ok(p) => p,
        Err(e) => return die(1, e),
    };
    let wait = match flag_ms(rest, "--wait-ms", 0) {
        Ok(w) => w,
        Err(e) => return die(1, e),
    };
    let deadline = Instant::now() + Duration::from_millis(wait);
    loop {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
                return 0;
            }
            Err(e) if Instant::now() >= deadline => {
                return die(2, format!("read {path}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

// ---------------------------------------------------------------- timing

fn sleep(rest: &[String]) -> i32 {
    let ms: u64 = match arg(rest, 0, "MS").and_then(|s| num(s, "MS")) {
        Ok(ms) => ms,
        Err(e) => return die(1, e),
    };
    std::thread::sleep(Duration::from_millis(ms));
    println!("slept");
    0
}

fn print_loop(rest: &[String]) -> i32 {
    let parsed = (|| -> Result<(u64, u64), String> {
        Ok((
            num(arg(rest, 0, "N")?, "N")?,
            num(arg(rest, 1, "MS")?, "MS")?,
        ))
    })();
    let (n, ms) = match parsed {
        Ok(v) => v,
        Err(e) => return die(1, e),
    };
    for i in 1..=n {
        println!("line {i}");
        flush();
        if i < n {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    0
}

fn exit_with(rest: &[String]) -> i32 {
    let code: i32 = match arg(rest, 0, "CODE").and_then(|s| num(s, "CODE")) {
        Ok(c) => c,
        Err(e) => return die(1, e),
    };
    println!("exiting {code}");
    eprintln!("bye");
    code
}

// ---------------------------------------------------------------- abuse

fn spin() -> i32 {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

fn alloc_mb(rest: &[String]) -> i32 {
    let n: usize = match arg(rest, 0, "N").and_then(|s| num(s, "N")) {
        Ok(n) => n,
        Err(e) => return die(1, e),
    };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 1..=n {
        let mut chunk = Vec::<u8>::with_capacity(1 << 20);
        // Touch every page so the memory is really committed.
        chunk.resize(1 << 20, (i & 0xff) as u8 | 1);
        chunks.push(black_box(chunk));
        if i % 16 == 0 {
            println!("allocated {i} MiB");
            flush();
        }
    }
    black_box(&chunks);
    println!("done");
    0
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // Non-tail: the result is used after the call, and black_box hides the
    // value from the optimiser so this cannot become a loop. The (never
    // taken) exit keeps rustc's unconditional_recursion lint quiet.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let next = recurse(black_box(depth + 1));
    black_box(next.wrapping_add(depth))
}

// ---------------------------------------------------------------- sockets

fn serve_tcp(rest: &[String]) -> i32 {
    let parsed = (|| -> Result<(u16, &str), String> {
        Ok((num(arg(rest, 0, "PORT")?, "PORT")?, arg(rest, 1, "REPLY")?))
    })();
    let (port, reply) = match parsed {
        Ok(v) => v,
        Err(e) => return die(1, e),
    };
    let listener = match std::net::TcpListener::bind(loopback(port)) {
        Ok(l) => l,
        Err(e) => return die(1, format!("bind 127.0.0.1:{port}: {e}")),
    };
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening {bound}");
    flush();
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        if let Err(e) = reader.read_line(&mut line) {
            eprintln!("read: {e}");
            continue;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let mut stream = reader.into_inner();
        if let Err(e) = stream
            .write_all(format!("{reply}:{line}\n").as_bytes())
            .and_then(|_| stream.flush())
        {
            eprintln!("write: {e}");
        }
    }
    0
}

fn connect_tcp(rest: &[String]) -> i32 {
    let parsed = (|| -> Result<(u16, &str, u64), String> {
        Ok((
            num(arg(rest, 0, "PORT")?, "PORT")?,
            arg(rest, 1, "MSG")?,
            flag_ms(rest, "--retry-ms", 5000)?,
        ))
    })();
    let (port, msg, retry) = match parsed {
        Ok(v) => v,
        Err(e) => return die(1, e),
    };
    let deadline = Instant::now() + Duration::from_millis(retry);
    let mut stream = loop {
        match std::net::TcpStream::connect(loopback(port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return die(3, format!("connect 127.0.0.1:{port}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if let Err(e) = stream.write_all(format!("{msg}\n").as_bytes()) {
        return die(3, format!("send: {e}"));
    }
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) => return die(3, format!("recv: {e}")),
        }
    }
    if reply.is_empty() {
        return die(3, "recv: empty reply");
    }
    println!("{}", String::from_utf8_lossy(&reply));
    0
}

/// 127.0.0.1:PORT as a concrete address (no name resolution involved).
fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------- resolve

fn resolve(names: &[String]) -> i32 {
    use std::net::ToSocketAddrs;
    let mut rc = 0;
    for name in names {
        match (name.as_str(), 0u16).to_socket_addrs() {
            Ok(addrs) => {
                let ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                println!("{name} {}", ips.join(" "));
            }
            Err(e) => {
                println!("{name} error: {e}");
                rc = 2;
            }
        }
    }
    rc
}
