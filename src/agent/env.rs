//! A container's environment and argv: literals, configMapKeyRef, secretKeyRef, fieldRef and
//! envFrom, with `$(VAR)` expansion in values, command and args as the kubelet does it.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;

use super::sandbox::volumes::field_value;
use crate::client::Client;

/// Why a container's environment could not be built (CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// Expands `$(NAME)` from `vars`; `$$(NAME)` is a literal `$(NAME)`; unknown names stay as
/// written, as in Kubernetes.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

async fn object(
    client: &Client,
    ns: &str,
    plural: &str,
    name: &str,
) -> Result<Option<Value>, Error> {
    match client
        .get(&format!("/api/v1/namespaces/{ns}/{plural}/{name}"))
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.code() == Some(404) => Ok(None),
        Err(e) => Err(Error(e.to_string())),
    }
}

fn data_of(object: &Value, secret: bool) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        let value = if secret {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| Error(format!("secret key {k}: {e}")))?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            text.to_owned()
        };
        out.push((k.clone(), value));
    }
    Ok(out)
}

/// The container's environment, in order (envFrom first, then env, later names winning).
///
/// # Errors
/// A referenced ConfigMap, Secret or key that is missing and not optional.
pub async fn environment(
    client: &Client,
    pod: &Value,
    container: &Value,
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(name, _)| *name != k);
        vars.push((k, v));
    };
    for from in container["envFrom"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (plural, r, secret) = if let Some(r) = from.get("configMapRef") {
            ("configmaps", r, false)
        } else if let Some(r) = from.get("secretRef") {
            ("secrets", r, true)
        } else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or_default();
        match object(client, ns, plural, name).await? {
            Some(o) => {
                for (k, v) in data_of(&o, secret)? {
                    set(&mut vars, format!("{prefix}{k}"), v);
                }
            }
            None if r["optional"].as_bool().unwrap_or(false) => {}
            None => {
                return Err(Error(format!(
                    "{} \"{name}\" not found",
                    &plural[..plural.len() - 1]
                )));
            }
        }
    }
    for e in container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            let known: HashMap<String, String> = vars.iter().cloned().collect();
            expand(v, &known)
        } else if let Some(from) = e.get("valueFrom") {
            let (plural, r, secret) = if let Some(r) = from.get("configMapKeyRef") {
                ("configmaps", r, false)
            } else if let Some(r) = from.get("secretKeyRef") {
                ("secrets", r, true)
            } else if let Some(f) = from.get("fieldRef") {
                let path = f["fieldPath"].as_str().unwrap_or_default();
                let v = field_value(pod, path)
                    .ok_or_else(|| Error(format!("env {name}: unsupported fieldPath {path:?}")))?;
                set(&mut vars, name, v);
                continue;
            } else {
                return Err(Error(format!(
                    "env {name}: only configMapKeyRef, secretKeyRef and fieldRef are supported"
                )));
            };
            let optional = r["optional"].as_bool().unwrap_or(false);
            let object_name = r["name"].as_str().unwrap_or_default();
            let key = r["key"].as_str().unwrap_or_default();
            let found = match object(client, ns, plural, object_name).await? {
                Some(o) => data_of(&o, secret)?
                    .into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v),
                None if optional => None,
                None => {
                    return Err(Error(format!(
                        "{} \"{object_name}\" not found",
                        &plural[..plural.len() - 1]
                    )));
                }
            };
            match found {
                Some(v) => v,
                None if optional => continue,
                None => {
                    return Err(Error(format!(
                        "couldn't find key {key} in {} {ns}/{object_name}",
                        &plural[..plural.len() - 1]
                    )));
                }
            }
        } else {
            String::new()
        };
        set(&mut vars, name, value);
    }
    Ok(vars)
}

/// A container's `command` or `args` (`key`) with `$(VAR)` expanded; `None` when the spec
/// does not set it.
pub fn expanded(container: &Value, key: &str, env: &[(String, String)]) -> Option<Vec<String>> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let list = container[key].as_array()?;
    Some(
        list.iter()
            .filter_map(Value::as_str)
            .map(|s| expand(s, &vars))
            .collect(),
    )
}

/// argv: `command[0]` is argv[0] when the spec gives a command, else the image name; then the
/// rest of command and args, with `$(VAR)` expanded.
pub fn argv(container: &Value, env: &[(String, String)]) -> Vec<String> {
    let mut argv = expanded(container, "command", env).unwrap_or_default();
    if argv.is_empty() {
        argv.push(container["image"].as_str().unwrap_or("main").to_owned());
    }
    argv.extend(expanded(container, "args", env).unwrap_or_default());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_expand_as_in_kubernetes() {
        let vars = HashMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }

    #[test]
    fn argv_starts_with_the_command_or_the_image() {
        let env = vec![("PORT".to_owned(), "8000".to_owned())];
        let c = json!({"image": "hello:v1", "args": ["serve", "--port=$(PORT)"]});
        assert_eq!(argv(&c, &env), ["hello:v1", "serve", "--port=8000"]);
        let c = json!({"image": "hello:v1", "command": ["app", "run"], "args": ["x"]});
        assert_eq!(argv(&c, &env), ["app", "run", "x"]);
    }
}
