//! `wk annotate`: add, change (`--overwrite`) or remove (`key-`) annotations; the code is
//! shared with `wk label`.

use super::Global;
use super::label::{Field, run};

/// Flags of `wk annotate` (the same as `wk label`).
pub type Args = super::label::Args;

/// Runs `wk annotate`.
///
/// # Errors
/// On bad arguments, a missing object, or a key that has a value without `--overwrite`.
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    run(args, global, Field::Annotations).await
}
