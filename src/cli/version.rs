//! `wk version`: the client's version and the server's `/version`.

use serde_json::json;

use super::output::{print, println, to_json, to_yaml};
use super::{Global, str_at};

/// Flags of `wk version`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only print the client version; do not contact the server.
    #[arg(long)]
    client: bool,
    /// Print as yaml or json.
    #[arg(short = 'o', long, value_parser = ["yaml", "json"])]
    output: Option<String>,
}

/// The client version as kubectl prints one (`v0.1.0`).
fn client_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Runs `wk version`.
///
/// # Errors
/// When the server cannot be reached (after the client version is printed).
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let client = json!({"gitVersion": client_version(), "platform": format!("{}/{}", std::env::consts::OS, crate::arch())});
    let server = if args.client {
        None
    } else {
        let connected = global.connect();
        match connected {
            Ok(session) => Some(session.client.get("/version").await),
            Err(e) => Some(Err(crate::client::Error::Config(e.to_string()))),
        }
    };
    if let Some(format) = &args.output {
        let mut doc = json!({"clientVersion": client});
        if let Some(Ok(v)) = &server {
            doc["serverVersion"] = v.clone();
        }
        print(&if format == "json" {
            to_json(&doc)?
        } else {
            to_yaml(&doc)?
        });
    } else {
        println(&format!("Client Version: {}", client_version()));
        if let Some(Ok(v)) = &server {
            println(&format!("Server Version: {}", str_at(v, "/gitVersion")));
        }
    }
    match server {
        Some(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}
