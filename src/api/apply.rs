//! Server-side apply: create-or-merge with field ownership recorded per manager in
//! `metadata.managedFields` (FieldsV1), so a manager's dropped fields are removed and a
//! field another applier owns with a different value is a conflict.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::objects::{self, FieldValidation};
use super::patch::{self, ListStrategy};
use super::{ApiState, Ctx, json_response};

/// The field set of an applied configuration, in FieldsV1 form (`f:name`, `k:{"name":"x"}`,
/// `v:"value"`), leaves as `{}`.
pub fn field_set(config: &Value, kind: &str) -> Value {
    let mut path = Vec::new();
    fields_of(config, kind, &mut path)
}

fn fields_of(v: &Value, kind: &str, path: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                    continue;
                }
                if path.len() == 1
                    && path[0] == "metadata"
                    && !matches!(
                        k.as_str(),
                        "labels" | "annotations" | "finalizers" | "ownerReferences"
                    )
                {
                    continue;
                }
                path.push(k.clone());
                out.insert(format!("f:{k}"), fields_of(child, kind, path));
                path.pop();
            }
        }
        Value::Array(items) => {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            match patch::list_strategy(kind, &p) {
                ListStrategy::MergeByKey(key) => {
                    for item in items {
                        if let Some(k) = item.get(key) {
                            out.insert(format!("k:{{\"{key}\":{k}}}"), fields_of(item, kind, path));
                        }
                    }
                }
                ListStrategy::MergePrimitives => {
                    for item in items {
                        out.insert(format!("v:{item}"), json!({}));
                    }
                }
                ListStrategy::Replace => {}
            }
        }
        _ => {}
    }
    Value::Object(out)
}

fn child<'a>(set: &'a Value, key: &str) -> Option<&'a Value> {
    set.as_object().and_then(|m| m.get(key))
}

/// Removes from `object` what `old` owned and `new` no longer names, unless another manager
/// still owns it.
fn remove_dropped(object: &mut Value, old: &Value, new: Option<&Value>, others: &[&Value]) {
    let Some(old) = old.as_object() else { return };
    for (key, old_child) in old {
        let new_child = new.and_then(|n| child(n, key));
        let other_children: Vec<&Value> = others.iter().filter_map(|o| child(o, key)).collect();
        if let Some(field) = key.strip_prefix("f:") {
            let Some(map) = object.as_object_mut() else {
                continue;
            };
            match new_child {
                None if other_children.is_empty() => {
                    map.remove(field);
                }
                _ => {
                    if let Some(sub) = map.get_mut(field) {
                        remove_dropped(sub, old_child, new_child, &other_children);
                    }
                }
            }
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(item_key) else {
                continue;
            };
            let Some(items) = object.as_array_mut() else {
                continue;
            };
            let matches = |item: &Value| wanted.iter().all(|(k, v)| item.get(k) == Some(v));
            match new_child {
                None if other_children.is_empty() => items.retain(|i| !matches(i)),
                _ => {
                    if let Some(item) = items.iter_mut().find(|i| matches(i)) {
                        remove_dropped(item, old_child, new_child, &other_children);
                    }
                }
            }
        } else if let Some(value) = key.strip_prefix("v:")
            && new_child.is_none()
            && other_children.is_empty()
            && let (Ok(v), Some(items)) =
                (serde_json::from_str::<Value>(value), object.as_array_mut())
        {
            items.retain(|i| *i != v);
        }
    }
}

/// The leaf paths of `new` that `other` also owns, where `live` and `config` disagree.
fn conflicts(
    new: &Value,
    other: &Value,
    live: Option<&Value>,
    config: Option<&Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let (Some(new), Some(other)) = (new.as_object(), other.as_object()) else {
        return;
    };
    for (key, new_child) in new {
        let Some(other_child) = other.get(key) else {
            continue;
        };
        let Some(field) = key.strip_prefix("f:") else {
            continue;
        };
        let live_child = live.and_then(|l| l.get(field));
        let config_child = config.and_then(|c| c.get(field));
        let p = format!("{path}.{field}");
        let leaf = new_child.as_object().is_none_or(Map::is_empty);
        if leaf {
            if live_child != config_child {
                out.push(p);
            }
        } else {
            conflicts(new_child, other_child, live_child, config_child, &p, out);
        }
    }
}

fn managed_entry(manager: &str, api_version: &str, fields: Value) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    })
}

/// Handles a PATCH with `application/apply-patch+yaml`.
///
/// # Errors
/// 400 without fieldManager, apiVersion or kind; 409 on a conflict without `force=true`.
pub async fn server_side_apply(
    state: &Arc<ApiState>,
    ctx: &Ctx,
    config: Value,
    mode: FieldValidation,
    dry_run: bool,
) -> ApiResult<Response> {
    let t = &ctx.target;
    let res = t.res;
    let name = t.name.clone().unwrap_or_default();
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed(
            "server-side apply to a subresource is not supported",
        ));
    }
    let manager = ctx
        .query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("PATCH requests with apply content type require fieldManager")
        })?
        .to_owned();
    let force = ctx.query.flag("force");
    if !config.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    for (field, expected) in [
        ("apiVersion", res.api_version()),
        ("kind", res.kind.to_owned()),
    ] {
        match config.get(field).and_then(Value::as_str) {
            None => {
                return Err(ApiError::bad_request(format!(
                    "{field} must be set in an apply patch"
                )));
            }
            Some(v) if v != expected => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({v}) does not match the expected {field} ({expected})"
                )));
            }
            Some(_) => {}
        }
    }
    match config.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "metadata.name must be set in an apply patch",
            ));
        }
    }
    let (_, unknown) = objects::normalize(res, &config, mode)?;
    let new_set = field_set(&config, res.kind);
    for _ in 0..8 {
        state.cache.sync().await?;
        let Some(live) = state.cache.get(&t.key()) else {
            let mut object = config.clone();
            object["metadata"]["managedFields"] =
                json!([managed_entry(&manager, &res.api_version(), new_set.clone())]);
            if let Some(ns) = &t.namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            let (object, _) = objects::normalize(res, &object, FieldValidation::Ignore)?;
            match state.create_object(res, object, dry_run).await {
                Ok(created) => return Ok(json_response(StatusCode::CREATED, &created, &[])),
                Err(e) if e.reason == "AlreadyExists" => continue,
                Err(e) => return Err(e),
            }
        };
        let entries = live
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mine = entries
            .iter()
            .find(|e| e["manager"] == manager.as_str() && e["operation"] == "Apply");
        let others: Vec<&Value> = entries
            .iter()
            .filter(|e| e["manager"] != manager.as_str() && e["operation"] == "Apply")
            .collect();
        let mut conflicting = Vec::new();
        for other in &others {
            let mut found = Vec::new();
            conflicts(
                &new_set,
                &other["fieldsV1"],
                Some(&live),
                Some(&config),
                "",
                &mut found,
            );
            if !found.is_empty() {
                conflicting.push((
                    other["manager"].as_str().unwrap_or_default().to_owned(),
                    found,
                ));
            }
        }
        if !conflicting.is_empty() && !force {
            let count: usize = conflicting.iter().map(|(_, f)| f.len()).sum();
            let list = conflicting
                .iter()
                .flat_map(|(m, fs)| {
                    fs.iter()
                        .map(move |f| format!("conflict with \"{m}\": {f}"))
                })
                .collect::<Vec<_>>()
                .join("\n- ");
            let mut e = ApiError::conflict_because(
                res,
                &name,
                format!(
                    "Apply failed with {count} conflict{}: {list}",
                    if count == 1 { "" } else { "s" }
                ),
            );
            e.message = format!(
                "Apply failed with {count} conflict{}: {list}",
                if count == 1 { "" } else { "s" }
            );
            return Err(e);
        }
        let mut merged = (*live).clone();
        let other_sets: Vec<&Value> = others.iter().map(|o| &o["fieldsV1"]).collect();
        if let Some(mine) = mine {
            remove_dropped(&mut merged, &mine["fieldsV1"], Some(&new_set), &other_sets);
        }
        let mut body = config.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("status");
        }
        patch::strategic_merge_patch(&mut merged, &body, res.kind)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut managed: Vec<Value> = entries
            .iter()
            .filter(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"))
            .cloned()
            .collect();
        if force {
            for (m, _) in &conflicting {
                for e in managed.iter_mut().filter(|e| e["manager"] == m.as_str()) {
                    let mut set = e["fieldsV1"].clone();
                    strip_set(&mut set, &new_set);
                    e["fieldsV1"] = set;
                }
            }
        }
        managed.push(managed_entry(&manager, &res.api_version(), new_set.clone()));
        merged["metadata"]["managedFields"] = json!(managed);
        let (normalized, _) = objects::normalize(res, &merged, FieldValidation::Ignore)?;
        match state.write_update(res, &live, normalized, dry_run).await {
            Ok(stored) => {
                let warnings = super::handlers::warnings_for(mode, &unknown);
                return Ok(json_response(StatusCode::OK, &stored, &warnings));
            }
            Err(e) if e.reason == "Conflict" && e.message.starts_with("Operation cannot") => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(res, &name))
}

/// Removes from `set` the leaves that `taken` names (a forced apply takes them over).
fn strip_set(set: &mut Value, taken: &Value) {
    let (Some(set), Some(taken)) = (set.as_object_mut(), taken.as_object()) else {
        return;
    };
    for (key, t) in taken {
        let leaf = t.as_object().is_none_or(Map::is_empty);
        if leaf {
            set.remove(key);
        } else if let Some(s) = set.get_mut(key) {
            strip_set(s, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_use_merge_keys_for_keyed_lists() {
        let d = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","labels":{"a":"b"}},
            "spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"web","image":"x"}]}}}});
        let set = field_set(&d, "Deployment");
        assert_eq!(
            set,
            json!({"f:metadata":{"f:labels":{"f:a":{}}},"f:spec":{"f:replicas":{},"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{"f:name":{},"f:image":{}}}}}}})
        );
    }

    #[test]
    fn dropped_fields_are_removed_unless_someone_else_owns_them() {
        let old = json!({"f:data":{"f:a":{},"f:b":{}}});
        let new = json!({"f:data":{"f:a":{}}});
        let mut live = json!({"data":{"a":"1","b":"2","c":"3"}});
        remove_dropped(&mut live, &old, Some(&new), &[]);
        assert_eq!(live, json!({"data":{"a":"1","c":"3"}}));
        let mut live = json!({"data":{"a":"1","b":"2"}});
        let other = json!({"f:data":{"f:b":{}}});
        remove_dropped(&mut live, &old, Some(&new), &[&other]);
        assert_eq!(live, json!({"data":{"a":"1","b":"2"}}));
    }
}
