//! The `wk` binary: parse the arguments, run the command, print the error chain.

use std::process::ExitCode;

fn main() -> ExitCode {
    wk::cli::main()
}
