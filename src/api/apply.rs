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
                if !tracked(path, k) {
                    continue;
                }
                path.push(k.clone());
                let set = fields_of(child, kind, path);
                path.pop();
                if !skipped_metadata(path, k, &set) {
                    out.insert(format!("f:{k}"), set);
                }
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

/// Whether managedFields track field `key` at `path`: not the type, the status or the
/// server-owned metadata.
fn tracked(path: &[String], key: &str) -> bool {
    match path {
        [] => !matches!(key, "apiVersion" | "kind" | "status"),
        [m] if m == "metadata" => matches!(
            key,
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        ),
        _ => true,
    }
}

/// Metadata holding only server-owned fields (name, uid...) owns nothing.
fn skipped_metadata(path: &[String], key: &str, set: &Value) -> bool {
    path.is_empty() && key == "metadata" && set.as_object().is_some_and(Map::is_empty)
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

fn managed_entry(manager: &str, operation: &str, api_version: &str, fields: Value) -> Value {
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": crate::clock::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    })
}

/// Who made a non-apply write, and through which subresource, for `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Updater {
    /// The `fieldManager` query parameter, else the User-Agent's product (`kubectl`).
    pub manager: String,
    /// `scale` for writes through /scale; the main resource otherwise.
    pub subresource: Option<String>,
}

/// Records an Update (create, PUT or non-apply PATCH) in `new`'s managedFields, as the
/// Kubernetes field manager does: the updater owns every field it set or changed, and those
/// fields leave every other manager's set. A write that changes no field leaves them as they are.
pub fn record_update(old: Option<&Value>, new: &mut Value, kind: &str, who: &Updater) {
    let mut entries = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (changed, removed) = match old {
        Some(old) => {
            let mut path = Vec::new();
            (
                changed_fields(Some(old), new, kind, &mut path),
                changed_fields(Some(new), old, kind, &mut path),
            )
        }
        None => (field_set(new, kind), json!({})),
    };
    let empty = |v: &Value| v.as_object().is_none_or(Map::is_empty);
    if empty(&changed) && empty(&removed) {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            match old.and_then(|o| o.pointer("/metadata/managedFields")) {
                Some(kept) => m.insert("managedFields".into(), kept.clone()),
                None => m.remove("managedFields"),
            };
        }
        return;
    }
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_owned();
    let subresource = who.subresource.as_deref();
    let is_mine = |e: &Value| {
        e["manager"] == who.manager.as_str()
            && e["operation"] == "Update"
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    let mut mine = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    for e in entries.iter_mut().filter(|e| !is_mine(e)) {
        strip_set(&mut e["fieldsV1"], &changed);
        strip_set(&mut e["fieldsV1"], &removed);
    }
    strip_set(&mut mine, &removed);
    union_set(&mut mine, &changed);
    entries.retain(|e| !is_mine(e) && !empty(&e["fieldsV1"]));
    let mut entry = managed_entry(&who.manager, "Update", &api_version, mine);
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entries.push(entry);
    new["metadata"]["managedFields"] = json!(entries);
}

/// The field set of what `new` sets differently from `old`, in FieldsV1 form.
fn changed_fields(old: Option<&Value>, new: &Value, kind: &str, path: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    match new {
        Value::Object(m) => {
            for (k, child) in m {
                if !tracked(path, k) {
                    continue;
                }
                let old_child = old.and_then(|o| o.get(k));
                if old_child == Some(child) {
                    continue;
                }
                path.push(k.clone());
                let set = match (old_child, child) {
                    (Some(o), Value::Object(_) | Value::Array(_))
                        if o.is_object() == child.is_object() =>
                    {
                        changed_fields(Some(o), child, kind, path)
                    }
                    _ => fields_of(child, kind, path),
                };
                path.pop();
                if !skipped_metadata(path, k, &set) {
                    out.insert(format!("f:{k}"), set);
                }
            }
        }
        Value::Array(items) => {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let old_items = old.and_then(Value::as_array);
            match patch::list_strategy(kind, &p) {
                ListStrategy::MergeByKey(key) => {
                    for item in items {
                        let Some(k) = item.get(key) else { continue };
                        let old_item =
                            old_items.and_then(|o| o.iter().find(|i| i.get(key) == Some(k)));
                        if old_item == Some(item) {
                            continue;
                        }
                        out.insert(
                            format!("k:{{\"{key}\":{k}}}"),
                            changed_fields(old_item, item, kind, path),
                        );
                    }
                }
                ListStrategy::MergePrimitives => {
                    for item in items {
                        if !old_items.is_some_and(|o| o.contains(item)) {
                            out.insert(format!("v:{item}"), json!({}));
                        }
                    }
                }
                ListStrategy::Replace => {}
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// Adds the fields of `more` to `set`.
fn union_set(set: &mut Value, more: &Value) {
    let (Some(set), Some(more)) = (set.as_object_mut(), more.as_object()) else {
        return;
    };
    for (key, m) in more {
        match set.get_mut(key) {
            Some(s) => union_set(s, m),
            None => {
                set.insert(key.clone(), m.clone());
            }
        }
    }
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
            object["metadata"]["managedFields"] = json!([managed_entry(
                &manager,
                "Apply",
                &res.api_version(),
                new_set.clone()
            )]);
            if let Some(ns) = &t.namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            let (object, _) = objects::normalize(res, &object, FieldValidation::Ignore)?;
            match state.create_object(res, object, None, dry_run).await {
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
        // Update managers own fields too: applying a different value to one is a conflict.
        let others: Vec<&Value> = entries
            .iter()
            .filter(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"))
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
        managed.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
        managed.push(managed_entry(
            &manager,
            "Apply",
            &res.api_version(),
            new_set.clone(),
        ));
        merged["metadata"]["managedFields"] = json!(managed);
        let (normalized, _) = objects::normalize(res, &merged, FieldValidation::Ignore)?;
        match state
            .write_update(res, &live, normalized, None, dry_run)
            .await
        {
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
            // An emptied parent would read as an owned leaf.
            if s.as_object().is_some_and(Map::is_empty) {
                set.remove(key);
            }
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

    fn who(manager: &str) -> Updater {
        Updater {
            manager: manager.into(),
            subresource: None,
        }
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_other_managers() {
        let mut created = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},
            "data":{"a":"1","b":"2"}});
        record_update(None, &mut created, "ConfigMap", &who("kubectl-create"));
        let entries = created["metadata"]["managedFields"].clone();
        assert_eq!(entries[0]["manager"], "kubectl-create");
        assert_eq!(entries[0]["operation"], "Update");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:data":{"f:a":{},"f:b":{}}})
        );

        let mut edited = created.clone();
        edited["data"]["b"] = json!("3");
        edited["data"]["c"] = json!("4");
        record_update(
            Some(&created),
            &mut edited,
            "ConfigMap",
            &who("kubectl-edit"),
        );
        let entries = edited["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data":{"f:a":{}}}));
        assert_eq!(entries[1]["manager"], "kubectl-edit");
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:data":{"f:b":{},"f:c":{}}})
        );

        // A write that changes nothing keeps managedFields exactly.
        let mut same = edited.clone();
        same["metadata"]["managedFields"] = json!([]);
        record_update(Some(&edited), &mut same, "ConfigMap", &who("other"));
        assert_eq!(same, edited);

        // Taking every field of a manager removes its entry.
        let mut all = edited.clone();
        all["data"]["a"] = json!("9");
        record_update(Some(&edited), &mut all, "ConfigMap", &who("kubectl-edit"));
        let entries = all["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:data":{"f:a":{},"f:b":{},"f:c":{}}})
        );
    }

    #[test]
    fn keyed_list_items_are_owned_per_item() {
        let old = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"a","image":"x"},{"name":"b","image":"y"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][1]["image"] = json!("z");
        record_update(Some(&old), &mut new, "Pod", &who("kubectl-set"));
        assert_eq!(
            new["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec":{"f:containers":{"k:{\"name\":\"b\"}":{"f:image":{}}}}})
        );
    }
}
