//! `kubectl exec` on the node: the agent endpoint's `/exec/{ns}/{pod}/{container}`, a
//! WebSocket speaking Kubernetes' `v5.channel.k8s.io` (and `v4`) stream protocol, which the
//! API server passes through from kubectl. Each binary message starts with its channel: 0
//! stdin, 1 stdout, 2 stderr, 3 the final Status, 255 (v5) "close this channel". The command
//! runs in a Linux container with `runc exec`, with the container's namespaces, user and
//! limits. Wasm containers have no process to enter; exec into them is refused with a reason.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Shared, sandbox};

/// The stream protocols spoken, newest first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

/// What kubectl asks for: the command (one `command` per argument) and the streams.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecQuery {
    /// argv.
    pub command: Vec<String>,
    /// Whether stdin is sent.
    pub stdin: bool,
    /// Whether a terminal is asked for (not given: the streams stay separate).
    pub tty: bool,
}

impl ExecQuery {
    /// Parses `command=a&command=b&stdin=true...`.
    pub fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" => q.command.push(v.into_owned()),
                "stdin" => q.stdin = v == "true" || v == "1",
                "tty" => q.tty = v == "true" || v == "1",
                _ => {}
            }
        }
        q
    }
}

/// The Status kubectl reads on channel 3 when the command has ended.
pub fn exit_status(argv: &[String], code: Option<i32>) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        None => failure("the command was killed or could not be waited for"),
    }
}

fn failure(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

/// `GET /exec/{ns}/{pod}/{container}`, upgraded to a WebSocket.
pub async fn exec(
    State(shared): State<Arc<Shared>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let query = ExecQuery::parse(query.as_deref().unwrap_or_default());
    if query.command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command\n",
        )
            .into_response();
    }
    let Some(uid) = shared.uid_of(&ns, &pod) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not on this node\n"),
        )
            .into_response();
    };
    let (pod_dir, _) = sandbox::paths(&shared.data_dir, &uid);
    let bundle = pod_dir.join("shim").join(&container);
    let target = match &shared.shim {
        Ok(shim) if bundle.join(wk_shim::supervise::SHIM_PID).exists() => {
            Ok(shim.exec_command(&format!("{uid}-{container}"), &query.command, query.stdin))
        }
        _ => Err(format!(
            "container {container} of pod {ns}/{pod} is a Wasm container (or not running): it has no process to exec into"
        )),
    };
    upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            match target {
                Ok(command) => run(socket, command, query).await,
                Err(m) => {
                    let mut socket = socket;
                    let _ = send_status(&mut socket, &failure(&m)).await;
                    let _ = socket.send(normal_close()).await;
                }
            }
        })
}

/// A close with code 1000: kubectl reads the end of its streams from it (a close without a
/// code is an error to it).
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

async fn send_status(socket: &mut WebSocket, status: &Value) -> Result<(), axum::Error> {
    let mut frame = vec![ERROR];
    frame.extend_from_slice(&serde_json::to_vec(status).unwrap_or_default());
    socket.send(Message::Binary(frame.into())).await
}

/// Runs the command, pumping its streams over the socket, and ends with its Status.
async fn run(mut socket: WebSocket, mut command: tokio::process::Command, query: ExecQuery) {
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = send_status(&mut socket, &failure(&format!("running runc exec: {e}"))).await;
            let _ = socket.send(normal_close()).await;
            return;
        }
    };
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let mut stdin = child.stdin.take();
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        tokio::select! {
            n = async { stdout.as_mut()?.read(&mut out_buf).await.ok() }, if stdout.is_some() => {
                match n {
                    Some(n) if n > 0 => {
                        let frame = [&[STDOUT][..], &out_buf[..n]].concat();
                        if socket.send(Message::Binary(frame.into())).await.is_err() { break; }
                    }
                    _ => stdout = None,
                }
            }
            n = async { stderr.as_mut()?.read(&mut err_buf).await.ok() }, if stderr.is_some() => {
                match n {
                    Some(n) if n > 0 => {
                        let frame = [&[STDERR][..], &err_buf[..n]].concat();
                        if socket.send(Message::Binary(frame.into())).await.is_err() { break; }
                    }
                    _ => stderr = None,
                }
            }
            // Read even once stdin is closed: a closed socket means kubectl went away.
            message = socket.recv() => {
                match message {
                    Some(Ok(Message::Binary(data))) => match data.split_first() {
                        Some((&STDIN, rest)) if !rest.is_empty() => {
                            if let Some(i) = stdin.as_mut()
                                && i.write_all(rest).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        Some((&CLOSE, [STDIN])) => stdin = None,
                        _ => {}
                    },
                    Some(Ok(_)) => {}
                    // kubectl went away: the command is not kept running for nobody.
                    _ => {
                        let _ = child.start_kill();
                        break;
                    }
                }
            }
        }
        if stdout.is_none() && stderr.is_none() {
            break;
        }
    }
    drop(stdin);
    let code = child.wait().await.ok().and_then(|s| s.code());
    let _ = send_status(&mut socket, &exit_status(&query.command, code)).await;
    let _ = socket.send(normal_close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_and_the_status_are_kubectl_s() {
        let q = ExecQuery::parse("command=sh&command=-c&command=echo+hi&stdin=true&stdout=true");
        assert_eq!(q.command, ["sh", "-c", "echo hi"]);
        assert!(q.stdin && !q.tty);
        let argv = q.command.clone();
        assert_eq!(exit_status(&argv, Some(0))["status"], "Success");
        let failed = exit_status(&argv, Some(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
