//! `wk push`, `wk pull` and `wk registry login|logout`: working with OCI registries from the
//! client, with credentials stored like Docker's `config.json` (no kubeconfig involved).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::Context;

use crate::oci::push::{self, Format};
use crate::oci::registry::{self, AuthConfig, Credential};

/// Flags of `wk push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The .wasm module or component.
    file: PathBuf,
    /// Where to publish it, e.g. 127.0.0.1:5000/hello:v1.
    reference: String,
    /// How to package it.
    #[arg(long, value_enum, default_value = "cncf")]
    format: Format,
    /// Talk plain HTTP to the registry (always so for loopback registries).
    #[arg(long)]
    plain_http: bool,
}

/// Flags of `wk pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image, e.g. 127.0.0.1:5000/hello:v1.
    reference: String,
    /// Talk plain HTTP to the registry (always so for loopback registries).
    #[arg(long)]
    plain_http: bool,
}

/// Flags of `wk registry`.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RegistryCommand {
    /// Check credentials against a registry and store them for `wk push` and `wk pull`.
    Login {
        /// The registry, e.g. 127.0.0.1:5000.
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Talk plain HTTP to the registry (always so for loopback registries).
        #[arg(long)]
        plain_http: bool,
    },
    /// Forget the credentials of a registry.
    Logout {
        /// The registry.
        registry: String,
    },
}

/// Runs `wk push`.
///
/// # Errors
/// When the file is not Wasm or the registry refuses it.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let bar = |sent: u64, total: u64| {
        if !tty {
            return;
        }
        let width = 30;
        let done = (sent * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\r[{}{}] {:>3}% {}/{}",
            "=".repeat(done as usize),
            " ".repeat((width - done) as usize),
            (sent * 100).checked_div(total).unwrap_or(100),
            super::image::human(sent),
            super::image::human(total)
        );
        let _ = std::io::stderr().flush();
    };
    let pushed = push::push(
        &args.file,
        &args.reference,
        args.format,
        args.plain_http,
        &bar,
    )
    .await
    .with_context(|| format!("pushing {} to {}", args.file.display(), args.reference))?;
    if tty {
        eprintln!();
    }
    println!(
        "{}@{}",
        crate::agent::images::repository(&args.reference),
        pushed.digest
    );
    eprintln!(
        "pushed {} ({}, layer {}) as {:?}",
        args.reference,
        super::image::human(pushed.size),
        pushed.layer,
        args.format
    );
    Ok(())
}

/// Runs `wk pull`: fetches and verifies every blob of an image (into a scratch store that is
/// then dropped), and shows its digest and kind.
///
/// # Errors
/// When the image cannot be pulled.
pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("making a scratch directory")?;
    if args.plain_http {
        let r = crate::oci::parse_reference(&args.reference)?;
        let yaml = format!(
            "mirrors:\n  \"{0}\":\n    endpoint: [\"http://{0}\"]\n",
            r.registry()
        );
        std::fs::write(scratch.path().join("registries.yaml"), yaml)?;
    }
    let store = crate::agent::images::Store::new(scratch.path());
    let puller = crate::oci::Puller::new(store, scratch.path(), u64::MAX);
    let pulled = puller
        .pull(&args.reference, &push::client_credentials())
        .await
        .with_context(|| format!("pulling {}", args.reference))?;
    let head = std::fs::read(&pulled.image.path)
        .map(|b| b[..b.len().min(8)].to_vec())
        .unwrap_or_default();
    let kind = if push::is_component(&head) {
        "component"
    } else {
        "module"
    };
    println!(
        "{}@{}",
        crate::agent::images::repository(&args.reference),
        pulled.image.id
    );
    println!("  format: {}", pulled.format);
    println!(
        "  wasm:   {} ({kind}, {})",
        pulled.image.digest,
        super::image::human(std::fs::metadata(&pulled.image.path).map_or(0, |m| m.len()))
    );
    println!("  size:   {} in all", super::image::human(pulled.size));
    Ok(())
}

/// Runs `wk registry`.
///
/// # Errors
/// When the registry refuses the credentials, or the file cannot be written.
pub async fn registry(args: RegistryArgs) -> anyhow::Result<()> {
    let path = registry::login_file();
    let mut config = registry::read_login_file(&path)?;
    match args.command {
        RegistryCommand::Login {
            registry,
            username,
            password,
            password_stdin,
            plain_http,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut p = String::new();
                    std::io::stdin().read_line(&mut p)?;
                    p.trim_end_matches(['\r', '\n']).to_owned()
                }
                (None, false) => anyhow::bail!("give --password or --password-stdin"),
            };
            push::check_login(
                &registry,
                Credential::Basic(username.clone(), password.clone()),
                plain_http,
            )
            .await
            .with_context(|| format!("logging in to {registry}"))?;
            config
                .auths
                .insert(registry.clone(), AuthConfig::basic(&username, &password));
            println!("Login Succeeded");
        }
        RegistryCommand::Logout { registry } => {
            if config.auths.remove(&registry).is_none() {
                anyhow::bail!("not logged in to {registry}");
            }
            println!("Removing login credentials for {registry}");
        }
    }
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    serde_json::to_writer_pretty(&mut tmp, &config)?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
