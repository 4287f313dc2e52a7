//! Reading manifests for `-f`: files, directories (with `-R`), stdin, multi-document YAML,
//! JSON, and `kind: List` documents, each object remembering the file it came from.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from, as kubectl names it in messages (`web.yaml`, `STDIN`).
    pub source: String,
    /// The object.
    pub object: Value,
}

/// Reads every object the `-f` arguments name; `-` is stdin.
///
/// # Errors
/// When a file cannot be read or parsed, or an object lacks `apiVersion` or `kind`.
pub async fn read(files: &[String], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    if files.is_empty() {
        bail!("must specify one of -f and -k");
    }
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || read_blocking(&files, recursive)).await?
}

fn read_blocking(files: &[String], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for file in files {
        if file == "-" {
            let text = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
            out.extend(parse("STDIN", &text, false)?);
            continue;
        }
        if file.starts_with("http://") || file.starts_with("https://") {
            bail!("reading manifests from URLs is not supported: {file}");
        }
        let path = Path::new(file);
        let meta = std::fs::metadata(path)
            .map_err(|_| anyhow::anyhow!("the path \"{file}\" does not exist"))?;
        let paths = if meta.is_dir() {
            walk(path, recursive)?
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let json = p.extension().is_some_and(|e| e == "json");
            out.extend(parse(&p.display().to_string(), &text, json)?);
        }
    }
    if out.is_empty() {
        bail!("no objects passed to apply");
    }
    Ok(out)
}

fn walk(dir: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        if path.is_dir() {
            if recursive {
                out.extend(walk(&path, true)?);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(out)
}

/// Parses one file's text into objects, skipping empty documents and flattening Lists.
///
/// # Errors
/// When the text is not YAML (or JSON), naming the line, or an object lacks its type.
pub fn parse(source: &str, text: &str, json: bool) -> anyhow::Result<Vec<Manifest>> {
    let mut docs = Vec::new();
    if json {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?;
        docs.push(value);
    } else {
        for doc in yaml_serde::Deserializer::from_str(text) {
            let value = Value::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?;
            docs.push(value);
        }
    }
    let mut out = Vec::new();
    for doc in docs {
        flatten(source, doc, &mut out)?;
    }
    Ok(out)
}

fn flatten(source: &str, doc: Value, out: &mut Vec<Manifest>) -> anyhow::Result<()> {
    match doc {
        Value::Null => Ok(()),
        Value::Object(ref map) if map.is_empty() => Ok(()),
        Value::Object(ref map) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
                for item in map["items"].as_array().cloned().unwrap_or_default() {
                    flatten(source, item, out)?;
                }
                return Ok(());
            }
            let mut missing = Vec::new();
            if map
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                missing.push("apiVersion not set");
            }
            if kind.is_empty() {
                missing.push("kind not set");
            }
            if !missing.is_empty() {
                bail!(
                    "error validating \"{source}\": error validating data: [{}]",
                    missing.join(", ")
                );
            }
            out.push(Manifest {
                source: source.to_owned(),
                object: doc,
            });
            Ok(())
        }
        other => bail!("error parsing {source}: a manifest must be an object, not {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_skips_empty_documents_and_flattens_lists() {
        let text = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n";
        let objects = parse("x.yaml", text, false).unwrap();
        let names: Vec<&str> = objects
            .iter()
            .map(|m| m.object["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn parse_errors_name_the_file_and_line() {
        let err = parse(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\n  metadata: x\n",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad.yaml") && err.contains("line 3"), "{err}");
        let err = parse("t.yaml", "metadata: {name: a}\n", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("apiVersion not set, kind not set"), "{err}");
    }
}
