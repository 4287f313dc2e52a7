//! Minimal `wasi:http/proxy` component (wasm32-wasip2) used by wk's tests.
//!
//!   GET /             -> 200 "Hello from wk!\n" (text/plain), or $GREETING when set
//!   GET /env/NAME     -> 200 value of env var NAME, 404 if unset
//!   GET /slow?ms=N    -> sleeps N ms (monotonic-clock pollable), 200 "slow N\n"
//!   GET /fail         -> 500 "fail\n"
//!   GET /trap         -> traps (`unreachable`), leaving no response
//!   GET /fetch?url=U  -> GETs U with wasi:http's outgoing handler; 200 with its status line
//!                        and body (`200 BODY`), or 502 `error: ...`
//!   GET /count        -> 200 "N\n": the requests this instance has served, this one included
//!   GET /once         -> 200 "once\n" in an instance's first request; traps in any later one
//!                        (a component that cannot be reused)
//!   POST /once        -> the same, with the request's body as the answer
//!   anything else     -> 404 "not found\n"
//!
//! Note: `/env/NAME` uses `std::env::var`, which makes the component import
//! `wasi:cli/environment` in addition to the proxy world's imports.

use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Handler;

/// Requests this instance has served.
static SERVED: AtomicU32 = AtomicU32::new(0);

wasip2::http::proxy::export!(Handler);

impl Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        SERVED.fetch_add(1, Ordering::Relaxed);
        let path_q = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = match path_q.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_q.as_str(), ""),
        };
        let (status, body): (u16, String) = match request.method() {
            Method::Get => route(path, query),
            Method::Post if path == "/once" => match route(path, query) {
                (200, _) => match read_body(request) {
                    Ok(body) => (200, body),
                    Err(e) => (400, format!("{e}\n")),
                },
                other => other,
            },
            _ => (404, "not found\n".into()),
        };
        respond(out, status, body.as_bytes());
    }
}

fn route(path: &str, query: &str) -> (u16, String) {
    match path {
        "/" => (
            200,
            std::env::var("GREETING").unwrap_or_else(|_| "Hello from wk!\n".into()),
        ),
        "/fail" => (500, "fail\n".into()),
        "/count" => (200, format!("{}\n", SERVED.load(Ordering::Relaxed))),
        "/once" if SERVED.load(Ordering::Relaxed) > 1 => core::arch::wasm32::unreachable(),
        "/once" => (200, "once\n".into()),
        "/trap" => core::arch::wasm32::unreachable(),
        "/fetch" => match query.split('&').find_map(|kv| kv.strip_prefix("url=")) {
            Some(url) => match fetch(&unescape(url)) {
                Ok((status, body)) => (200, format!("{status} {body}")),
                Err(e) => (502, format!("error: {e}\n")),
            },
            None => (400, "fetch needs ?url=\n".into()),
        },
        "/slow" => {
            let ms: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
            (200, format!("slow {ms}\n"))
        }
        _ => match path.strip_prefix("/env/") {
            Some(name) if !name.is_empty() => match std::env::var(name) {
                Ok(v) => (200, v),
                Err(_) => (404, format!("env {name} not set\n")),
            },
            _ => (404, "not found\n".into()),
        },
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).expect("valid status");
    let out_body = resp.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(resp));
    {
        let stream = out_body.write().expect("stream taken once");
        // blocking_write_and_flush accepts at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
        // `stream` must be dropped before the body is finished.
    }
    OutgoingBody::finish(out_body, None).expect("finish body");
}

/// `%3A` and friends in a query value.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GETs `url` (`http://host[:port]/path`) and returns its status and body.
fn fetch(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let pending = wasip2::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "body taken twice")?;
    // The stream, declared after its body, is dropped before it.
    let stream = body.stream().map_err(|()| "stream taken twice")?;
    Ok((status, read_all(&stream)?))
}

/// The request's body, as text.
fn read_body(request: IncomingRequest) -> Result<String, String> {
    let body = request.consume().map_err(|()| "body taken twice")?;
    let stream = body.stream().map_err(|()| "stream taken twice")?;
    read_all(&stream)
}

fn read_all(stream: &wasip2::io::streams::InputStream) -> Result<String, String> {
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(65_536) {
            Ok(chunk) => data.extend(chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}
