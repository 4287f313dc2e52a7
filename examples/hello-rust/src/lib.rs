//! A wasi:http component in Rust.
//!
//!   GET /             200, $GREETING (from the pod spec) or "Hello from Rust on wk!"
//!   GET /file/PATH    200 with the file /PATH (a mounted volume), 404 when it cannot be read
//!   anything else     404

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let path = path.split('?').next().unwrap_or("/");
        let (status, body) = match (request.method(), path) {
            (Method::Get, "/") => (
                200,
                std::env::var("GREETING")
                    .unwrap_or_else(|_| "Hello from Rust on wk!".into())
                    .into_bytes(),
            ),
            (Method::Get, p) if p.starts_with("/file/") => {
                let file = &p["/file".len()..];
                match std::fs::read(file) {
                    Ok(bytes) => (200, bytes),
                    Err(e) => (404, format!("{file}: {e}\n").into_bytes()),
                }
            }
            _ => (404, b"not found\n".to_vec()),
        };
        respond(out, status, &body);
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
        ("content-length".into(), body.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let out_body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = out_body.write().expect("the stream, once");
        // blocking-write-and-flush takes at most 4096 bytes at a time.
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write the body");
        }
    }
    OutgoingBody::finish(out_body, None).expect("finish the body");
}
