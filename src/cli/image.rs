//! `wk image import|ls|rm`: a node's image store, without a registry (air-gapped gateways), as
//! `k3s ctr images import` does.

use std::path::PathBuf;

use anyhow::Context;

use crate::agent::images;

/// Flags of `wk image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The node's data directory [default: /var/lib/wk/agent as root, else ~/.local/share/wk/agent]
    #[arg(long, env = "WK_AGENT_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Import a .wasm module or component under a name, on this node.
    Import {
        /// The .wasm file.
        file: PathBuf,
        /// The image name pods refer to, e.g. hello:v1.
        #[arg(long)]
        name: String,
    },
    /// List the images on this node.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove images from this node (by name or id); their blobs go unless another image
    /// shares them.
    Rm {
        /// Image names (`hello:v1`) or ids (`sha256:…`).
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// Runs `wk image`.
///
/// # Errors
/// When the file cannot be read or is not Wasm, or the store cannot be read or written.
pub fn execute(args: Args) -> anyhow::Result<()> {
    let dir = args
        .data_dir
        .unwrap_or_else(|| crate::server::default_data_dir().join("agent"));
    let store = images::Store::new(&dir);
    match args.command {
        Command::Import { file, name } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let (digest, _) = store.add(std::io::BufReader::new(f)).map_err(|e| match e {
                images::Error::NotWasm(_) => images::Error::NotWasm(file.display().to_string()),
                e => e,
            })?;
            store.tag(&name, &digest)?;
            println!("{} {digest}", images::normalize(&name));
        }
        Command::Ls => {
            let index = store.try_index()?;
            let mut rows = vec![[
                "IMAGE".to_owned(),
                "ID".into(),
                "SIZE".into(),
                "FORMAT".into(),
            ]];
            let mut named = std::collections::HashSet::new();
            for (name, id) in &index.names {
                named.insert(id.clone());
                let record = index.images.get(id).cloned().unwrap_or_default();
                rows.push([
                    name.clone(),
                    short(id),
                    human(store.size(&record)),
                    record.format,
                ]);
            }
            for (id, record) in index.images.iter().filter(|(id, _)| !named.contains(*id)) {
                let repo = record
                    .repos
                    .first()
                    .map_or("<none>".into(), |r| format!("{r}@{id}"));
                rows.push([
                    repo,
                    short(id),
                    human(store.size(record)),
                    record.format.clone(),
                ]);
            }
            let widths: Vec<usize> = (0..4)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for r in rows {
                println!(
                    "{:w0$}   {:w1$}   {:w2$}   {}",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                );
            }
        }
        Command::Rm { images: names } => {
            for name in names {
                let index = store.try_index()?;
                let id = if name.starts_with("sha256:") {
                    let full: Vec<&String> = index
                        .images
                        .keys()
                        .filter(|id| id.starts_with(&name))
                        .collect();
                    match full.as_slice() {
                        [one] => (*one).clone(),
                        [] => anyhow::bail!("no image {name} on this node"),
                        _ => anyhow::bail!("{name} names more than one image; give more digits"),
                    }
                } else {
                    match store.find(&name)? {
                        Some(image) => image.id,
                        None => anyhow::bail!("no image {name} on this node"),
                    }
                };
                let freed = store.remove(&id)?;
                println!("Deleted: {id} ({} freed)", human(freed));
            }
        }
    }
    Ok(())
}

/// `sha256:0123456789ab`: the first 12 digits, as `crictl images` shows them.
fn short(id: &str) -> String {
    id.strip_prefix("sha256:")
        .map_or(id.to_owned(), |h| h.chars().take(12).collect())
}

/// Bytes as `crictl` prints them: `2.1MB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}
