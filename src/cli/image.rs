//! `wk image import`: load a `.wasm` file into a node's image store, for nodes without a
//! registry (air-gapped gateways), as `k3s ctr images import` does.

use std::path::PathBuf;

use anyhow::Context;

use crate::agent::images;

/// Flags of `wk image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Import a .wasm module or component under a name, on this node.
    Import {
        /// The .wasm (or .wat) file.
        file: PathBuf,
        /// The image name pods refer to, e.g. hello:v1.
        #[arg(long)]
        name: String,
        /// The node's data directory [default: /var/lib/wk/agent as root, else ~/.local/share/wk/agent]
        #[arg(long, env = "WK_AGENT_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the images on this node.
    List {
        /// The node's data directory.
        #[arg(long, env = "WK_AGENT_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn store(data_dir: Option<PathBuf>) -> images::Store {
    images::Store::new(&data_dir.unwrap_or_else(|| crate::server::default_data_dir().join("agent")))
}

/// Runs `wk image`.
///
/// # Errors
/// When the file cannot be read or is not Wasm, or the store cannot be written.
pub fn execute(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Import {
            file,
            name,
            data_dir,
        } => {
            let store = store(data_dir);
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let image = store.add(std::io::BufReader::new(f)).map_err(|e| match e {
                images::Error::NotWasm(_) => images::Error::NotWasm(file.display().to_string()),
                e => e,
            })?;
            store.tag(&name, &image.digest)?;
            println!("{} {}", images::normalize(&name), image.digest);
        }
        Command::List { data_dir } => {
            let store = store(data_dir);
            let index = store.index();
            let width = index.keys().map(String::len).max().unwrap_or(5).max(5);
            println!("{:width$}   DIGEST", "IMAGE");
            for (name, digest) in index {
                println!("{name:width$}   {digest}");
            }
        }
    }
    Ok(())
}
