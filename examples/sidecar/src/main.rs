//! A sidecar: every two seconds it writes a line into the pod's shared volume (/shared), then
//! asks the web container on the pod's localhost for that file and logs what it answered. Both
//! containers are Wasm; they share the pod's network namespace and its emptyDir.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn main() {
    let port = std::env::var("WEB_PORT").unwrap_or_else(|_| "8000".into());
    for tick in 1u64.. {
        let line = format!("written by the sidecar, tick {tick}\n");
        if let Err(e) = std::fs::write("/shared/message.txt", &line) {
            eprintln!("sidecar: writing /shared/message.txt: {e}");
        }
        match ask(&port) {
            Ok(body) => println!("web answered: {}", body.trim_end()),
            Err(e) => eprintln!("sidecar: asking 127.0.0.1:{port}: {e}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn ask(port: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}"))?;
    stream.write_all(b"GET /file/shared/message.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}
