//! `wk debug`: hidden tools that tests and benchmarks drive.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;

use crate::store::{RedbStore, Store};

/// Flags of `wk debug`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write keys to a store with several concurrent writers, printing each acknowledged key
    /// and revision on stdout (the crash test kills this process at random moments).
    StoreWriter {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    /// Open a store, report whether it needed repair, and print every key and revision.
    StoreDump {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
    },
}

/// Runs a debug tool.
///
/// # Errors
/// When the store fails.
pub async fn execute(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::StoreWriter { db, writers } => {
            let store = Arc::new(RedbStore::open(&db).context("opening the store")?);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            for w in 0..writers {
                let (store, tx) = (store.clone(), tx.clone());
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let key = format!("/crash/{}/{w}/{i:08}", std::process::id());
                        let value = Bytes::from(format!("{{\"writer\":{w},\"seq\":{i}}}"));
                        match store.create(&key, value).await {
                            Ok(rev) => {
                                if tx.send(format!("{key} {rev}")).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(format!("ERROR {e}"));
                                return;
                            }
                        }
                    }
                });
            }
            drop(tx);
            let mut out = std::io::stdout().lock();
            while let Some(line) = rx.recv().await {
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Ok(())
        }
        Command::StoreDump { db } => {
            let store = RedbStore::open(&db).context("opening the store")?;
            println!("repaired {}", store.repaired_on_open());
            let (kvs, rev) = store.list("/").await?;
            println!("revision {rev}");
            for kv in kvs {
                println!("{} {}", kv.key, kv.mod_revision);
            }
            Ok(())
        }
    }
}
