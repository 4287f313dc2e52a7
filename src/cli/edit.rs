//! `wk edit`: fetch an object, open it in `$KUBE_EDITOR` or `$EDITOR`, and send what changed
//! as a strategic merge patch, as kubectl does. Only the edited fields travel, so a concurrent
//! status write does not make the edit conflict; changing resourceVersion in the editor makes
//! it a precondition.

use anyhow::{Context, bail};
use http::Method;
use serde::Deserialize;
use serde_json::Value;

use super::apply::SMP;
use super::output::{println, sorted, to_json, to_yaml};
use super::target::{object_path, object_ref, one_object, scope, with_query};
use super::{Global, Reported, report};
use crate::api::patch::three_way_merge_patch;

const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit. If an error occurs while saving this file will be\n# reopened with the relevant failures.\n#\n";

/// Flags of `wk edit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME` or `TYPE/NAME`.
    #[arg(value_name = "TYPE[.GROUP] NAME", required = true)]
    args: Vec<String>,
    /// The format to edit in: yaml or json.
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json"])]
    output: String,
    /// The name of the manager that tracks field ownership.
    #[arg(long, default_value = "kubectl-edit")]
    field_manager: String,
}

/// Runs `wk edit`.
///
/// # Errors
/// When the object cannot be read, the editor fails, or the server refuses the change (the
/// edited copy is then kept and its path printed).
pub async fn execute(args: Args, global: &Global) -> anyhow::Result<()> {
    let (res, name, rest) = one_object(&args.args)?;
    if !rest.is_empty() {
        bail!("edit takes one object: TYPE NAME or TYPE/NAME");
    }
    let session = global.connect()?;
    let path = object_path(res, scope(res, &session.namespace), &name);
    let original = session.client.get(&path).await?;
    let json = args.output == "json";
    let body = if json {
        to_json(&original)?
    } else {
        to_yaml(&original)?
    };
    let file = tempfile::Builder::new()
        .prefix("wk-edit-")
        .suffix(if json { ".json" } else { ".yaml" })
        .tempfile()?
        .into_temp_path();
    tokio::fs::write(&file, format!("{HEADER}{body}"))
        .await
        .context("writing the file to edit")?;

    let editor = ["KUBE_EDITOR", "EDITOR"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&*file)
        .status()
        .await
        .with_context(|| format!("starting the editor \"{editor}\""))?;
    if !status.success() {
        bail!("there was a problem with the editor \"{editor}\"");
    }
    let text = tokio::fs::read_to_string(&file)
        .await
        .context("reading the edited file")?;
    let stripped: String = text
        .lines()
        .skip_while(|l| l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if stripped.trim().is_empty() {
        eprintln!("Edit cancelled, saved file was empty.");
        return Ok(());
    }
    let edited: Value = match Value::deserialize(yaml_serde::Deserializer::from_str(&stripped)) {
        Ok(v) => v,
        Err(e) => {
            let kept = file.keep()?;
            bail!(
                "the edited file is not valid: {e}\nA copy of your changes has been stored to \"{}\"",
                kept.display()
            );
        }
    };
    if sorted(&edited) == sorted(&original) {
        eprintln!("Edit cancelled, no changes made.");
        return Ok(());
    }
    for field in ["apiVersion", "kind"] {
        if edited[field] != original[field] {
            bail!("At least one of apiVersion, kind and name was changed");
        }
    }
    if edited["metadata"]["name"] != original["metadata"]["name"] {
        bail!("At least one of apiVersion, kind and name was changed");
    }
    let patch = three_way_merge_patch(Some(&original), &edited, &original, res.kind)
        .map_err(|e| anyhow::anyhow!("the edited object cannot be sent as a patch: {e}"))?;
    if patch.as_object().is_some_and(serde_json::Map::is_empty) {
        eprintln!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let url = with_query(
        &path,
        &[
            ("fieldManager", &args.field_manager),
            ("fieldValidation", "Strict"),
        ],
    );
    match session
        .client
        .request(
            Method::PATCH,
            &url,
            Some(SMP),
            Some(serde_json::to_vec(&patch)?),
        )
        .await
    {
        Ok(_) => {
            println(&format!("{} edited", object_ref(res, &name)));
            Ok(())
        }
        Err(e) => {
            report(&e.into());
            let kept = file.keep()?;
            eprintln!(
                "A copy of your changes has been stored to \"{}\"",
                kept.display()
            );
            eprintln!("error: Edit cancelled, no valid changes were saved.");
            Err(Reported.into())
        }
    }
}
