//! `wk completion SHELL`: shell completion scripts, generated from the command definitions.

use clap::CommandFactory;
use clap_complete::Shell;

/// Flags of `wk completion`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Prints the completion script for a shell.
///
/// # Errors
/// Never; the signature matches the other verbs.
pub fn execute(args: &Args) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "wk", &mut out);
    super::output::print(&String::from_utf8_lossy(&out));
    Ok(())
}
