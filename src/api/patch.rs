//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic merge patch, plus the three-way patch a client-side apply sends.

use serde_json::{Map, Value};

/// The `$patch` directive key (values `merge`, `replace`, `delete`).
const PATCH_DIRECTIVE: &str = "$patch";
/// The `$retainKeys` directive key.
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
/// Prefix of the `$setElementOrder/<field>` directive keys.
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder/";
/// Prefix of the `$deleteFromPrimitiveList/<field>` directive keys.
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList/";

type JsonMap = Map<String, Value>;

/// Why a patch could not be applied or computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    /// A JSON patch document that is not an array of operations.
    #[error("json patch must be an array of operations")]
    NotAnArray,
    /// A malformed JSON patch operation (not an object, unknown op, missing member).
    #[error("json patch operation {index}: {reason}")]
    InvalidOperation {
        /// Position of the operation in the patch array.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON pointer that does not follow RFC 6901 syntax.
    #[error("invalid JSON pointer {0:?}")]
    InvalidPointer(String),
    /// A JSON patch operation referring to a location that does not exist.
    #[error("json patch operation {index} ({op}): path {path:?} does not exist")]
    PathNotFound {
        /// Position of the operation in the patch array.
        index: usize,
        /// The operation name.
        op: &'static str,
        /// The pointer that could not be resolved.
        path: String,
    },
    /// A JSON patch array index past the end of the array.
    #[error("json patch operation {index} ({op}): array index out of bounds at {path:?}")]
    IndexOutOfBounds {
        /// Position of the operation in the patch array.
        index: usize,
        /// The operation name.
        op: &'static str,
        /// The pointer holding the bad index.
        path: String,
    },
    /// A JSON patch `move` whose destination lies inside its source.
    #[error(
        "json patch operation {index} (move): cannot move {from:?} into its own child {path:?}"
    )]
    MoveIntoChild {
        /// Position of the operation in the patch array.
        index: usize,
        /// The source pointer.
        from: String,
        /// The destination pointer.
        path: String,
    },
    /// A JSON patch `test` operation whose value did not match.
    #[error("test operation {index} failed at {path:?}")]
    TestFailed {
        /// Position of the operation in the patch array.
        index: usize,
        /// The tested pointer.
        path: String,
    },
    /// A strategic merge patch `$patch` directive with an unknown value.
    #[error("strategic merge patch: $patch directive {0:?} is not supported")]
    UnsupportedDirective(String),
    /// A keyed-list item in a strategic merge patch without its merge key.
    #[error("strategic merge patch: list {list:?} item is missing merge key {key:?}")]
    MissingMergeKey {
        /// Dotted path of the list.
        list: String,
        /// The merge key the item lacks.
        key: String,
    },
    /// A strategic merge patch directive whose value has the wrong shape.
    #[error("strategic merge patch: directive {directive:?} at {path:?} must be {expected}")]
    BadDirectiveValue {
        /// The directive key.
        directive: String,
        /// Dotted path of the map holding the directive.
        path: String,
        /// What the value should have been.
        expected: &'static str,
    },
    /// A three-way merge input that is not a JSON object.
    #[error("three-way merge patch: {0} is not a JSON object")]
    NotAnObject(&'static str),
}

/// How a list field is merged by a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch list replaces the list.
    Replace,
    /// Items are objects matched by the named key and merged.
    MergeByKey(&'static str),
    /// Items are scalars; the patch adds to the set.
    MergePrimitives,
}

// ---------------------------------------------------------------------------
// RFC 7386
// ---------------------------------------------------------------------------

/// Applies a JSON merge patch (RFC 7386) to `target` in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                map.shift_remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// RFC 6902
// ---------------------------------------------------------------------------

/// Applies a JSON patch (RFC 6902) to `target`; on error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::NotAnArray);
    };
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let Value::Object(op) = op else {
            return Err(invalid_op(index, "operation is not an object"));
        };
        apply_operation(&mut doc, index, op)?;
    }
    *target = doc;
    Ok(())
}

fn invalid_op(index: usize, reason: impl Into<String>) -> PatchError {
    PatchError::InvalidOperation {
        index,
        reason: reason.into(),
    }
}

/// Where an operation points, for error messages.
struct Location<'a> {
    index: usize,
    op: &'static str,
    text: &'a str,
}

impl Location<'_> {
    fn not_found(&self) -> PatchError {
        PatchError::PathNotFound {
            index: self.index,
            op: self.op,
            path: self.text.to_string(),
        }
    }

    fn out_of_bounds(&self) -> PatchError {
        PatchError::IndexOutOfBounds {
            index: self.index,
            op: self.op,
            path: self.text.to_string(),
        }
    }
}

fn string_member<'a>(op: &'a JsonMap, index: usize, name: &str) -> Result<&'a str, PatchError> {
    match op.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid_op(
            index,
            format!("member {name:?} must be a string"),
        )),
        None => Err(invalid_op(index, format!("missing member {name:?}"))),
    }
}

fn value_member(op: &JsonMap, index: usize) -> Result<&Value, PatchError> {
    op.get("value")
        .ok_or_else(|| invalid_op(index, "missing member \"value\""))
}

fn apply_operation(doc: &mut Value, index: usize, op: &JsonMap) -> Result<(), PatchError> {
    let name: &'static str = match string_member(op, index, "op")? {
        "add" => "add",
        "remove" => "remove",
        "replace" => "replace",
        "move" => "move",
        "copy" => "copy",
        "test" => "test",
        other => return Err(invalid_op(index, format!("unknown operation {other:?}"))),
    };
    let path_text = string_member(op, index, "path")?;
    let path = parse_pointer(path_text)?;
    let loc = Location {
        index,
        op: name,
        text: path_text,
    };
    match name {
        "add" => {
            let value = value_member(op, index)?.clone();
            add_at(doc, &path, value, &loc)
        }
        "remove" => {
            if path.is_empty() {
                return Err(invalid_op(index, "cannot remove the whole document"));
            }
            remove_at(doc, &path, &loc).map(drop)
        }
        "replace" => {
            let value = value_member(op, index)?.clone();
            let slot = lookup_mut(doc, &path).ok_or_else(|| loc.not_found())?;
            *slot = value;
            Ok(())
        }
        "move" => {
            let from_text = string_member(op, index, "from")?;
            let from = parse_pointer(from_text)?;
            let from_loc = Location {
                index,
                op: name,
                text: from_text,
            };
            if from == path {
                return lookup(doc, &from)
                    .map(drop)
                    .ok_or_else(|| from_loc.not_found());
            }
            if path.starts_with(&from) {
                return Err(PatchError::MoveIntoChild {
                    index,
                    from: from_text.to_string(),
                    path: path_text.to_string(),
                });
            }
            let value = remove_at(doc, &from, &from_loc)?;
            add_at(doc, &path, value, &loc)
        }
        "copy" => {
            let from_text = string_member(op, index, "from")?;
            let from = parse_pointer(from_text)?;
            let from_loc = Location {
                index,
                op: name,
                text: from_text,
            };
            let value = lookup(doc, &from)
                .ok_or_else(|| from_loc.not_found())?
                .clone();
            add_at(doc, &path, value, &loc)
        }
        _ => {
            let expected = value_member(op, index)?;
            match lookup(doc, &path) {
                Some(actual) if json_equal(actual, expected) => Ok(()),
                _ => Err(PatchError::TestFailed {
                    index,
                    path: path_text.to_string(),
                }),
            }
        }
    }
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
fn parse_pointer(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let bad = || PatchError::InvalidPointer(pointer.to_string());
    let rest = pointer.strip_prefix('/').ok_or_else(bad)?;
    rest.split('/')
        .map(|token| unescape_token(token).ok_or_else(bad))
        .collect()
}

fn unescape_token(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// An array reference token, classified.
enum ArrayIndex {
    At(usize),
    End,
    TooLarge,
    Invalid,
}

fn array_index(token: &str) -> ArrayIndex {
    if token == "-" {
        return ArrayIndex::End;
    }
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return ArrayIndex::Invalid;
    }
    token.parse().map_or(ArrayIndex::TooLarge, ArrayIndex::At)
}

fn lookup<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |current, token| match current {
        Value::Object(map) => map.get(token),
        Value::Array(items) => match array_index(token) {
            ArrayIndex::At(i) => items.get(i),
            _ => None,
        },
        _ => None,
    })
}

fn lookup_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |current, token| match current {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => match array_index(token) {
            ArrayIndex::At(i) => items.get_mut(i),
            _ => None,
        },
        _ => None,
    })
}

fn add_at(
    doc: &mut Value,
    path: &[String],
    value: Value,
    loc: &Location,
) -> Result<(), PatchError> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match lookup_mut(doc, parent) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(items)) => match array_index(last) {
            ArrayIndex::End => {
                items.push(value);
                Ok(())
            }
            ArrayIndex::At(i) if i <= items.len() => {
                items.insert(i, value);
                Ok(())
            }
            ArrayIndex::At(_) | ArrayIndex::TooLarge => Err(loc.out_of_bounds()),
            ArrayIndex::Invalid => Err(loc.not_found()),
        },
        _ => Err(loc.not_found()),
    }
}

fn remove_at(doc: &mut Value, path: &[String], loc: &Location) -> Result<Value, PatchError> {
    let Some((last, parent)) = path.split_last() else {
        return Ok(std::mem::take(doc));
    };
    match lookup_mut(doc, parent) {
        Some(Value::Object(map)) => map.shift_remove(last).ok_or_else(|| loc.not_found()),
        Some(Value::Array(items)) => match array_index(last) {
            ArrayIndex::At(i) if i < items.len() => Ok(items.remove(i)),
            ArrayIndex::At(_) | ArrayIndex::TooLarge => Err(loc.out_of_bounds()),
            ArrayIndex::End | ArrayIndex::Invalid => Err(loc.not_found()),
        },
        _ => Err(loc.not_found()),
    }
}

/// JSON equality as RFC 6902 `test` defines it (numbers compare by value).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(p), Some(q)) = (x.as_i64(), y.as_i64()) {
                p == q
            } else if let (Some(p), Some(q)) = (x.as_u64(), y.as_u64()) {
                p == q
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// Merge keys
// ---------------------------------------------------------------------------

/// The strategic-merge strategy of the list at `path` (object field names from the root) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, MergePrimitives, Replace};
    let Some((&field, parents)) = path.split_last() else {
        return Replace;
    };
    if parents.last() == Some(&"metadata") {
        return match field {
            "finalizers" => MergePrimitives,
            "ownerReferences" => MergeByKey("uid"),
            _ => Replace,
        };
    }
    if let Some(rest) = pod_spec_rest(kind, parents) {
        return pod_spec_list(rest, field);
    }
    match (kind, parents, field) {
        (_, ["status"], "conditions") => MergeByKey("type"),
        ("Pod", ["status"], "podIPs" | "hostIPs") => MergeByKey("ip"),
        ("Pod", ["status"], "resourceClaimStatuses") => MergeByKey("name"),
        ("Service", ["spec"], "ports") => MergeByKey("port"),
        ("Node", ["spec"], "podCIDRs") => MergePrimitives,
        ("Node", ["status"], "addresses") => MergeByKey("type"),
        ("ServiceAccount", [], "secrets") => MergeByKey("name"),
        _ => Replace,
    }
}

/// The path below a PodSpec when `parents` passes through one.
fn pod_spec_rest<'a, 'b>(kind: &str, parents: &'a [&'b str]) -> Option<&'a [&'b str]> {
    if kind == "Pod"
        && let Some((&"spec", rest)) = parents.split_first()
    {
        return Some(rest);
    }
    let start = parents
        .windows(2)
        .rposition(|pair| pair == ["template", "spec"])?;
    parents.get(start + 2..)
}

fn pod_spec_list(rest: &[&str], field: &str) -> ListStrategy {
    use ListStrategy::{MergeByKey, Replace};
    match rest {
        [] => match field {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims"
            | "schedulingGates" => MergeByKey("name"),
            "hostAliases" => MergeByKey("ip"),
            "topologySpreadConstraints" => MergeByKey("topologyKey"),
            _ => Replace,
        },
        [list]
            if matches!(
                *list,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            match field {
                "env" => MergeByKey("name"),
                "ports" => MergeByKey("containerPort"),
                "volumeMounts" => MergeByKey("mountPath"),
                "volumeDevices" => MergeByKey("devicePath"),
                _ => Replace,
            }
        }
        _ => Replace,
    }
}

// ---------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------

/// Applies a Kubernetes strategic merge patch for an object of `kind`; on error `target` is left unchanged.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), PatchError> {
    let mut merger = Merger {
        kind,
        path: Vec::new(),
    };
    let merged = match patch {
        Value::Object(patch_map) => {
            let base = match target {
                Value::Object(map) => map.clone(),
                _ => Map::new(),
            };
            Value::Object(merger.merge_map(base, patch_map)?.unwrap_or_default())
        }
        other => merger.clean_item(other)?.unwrap_or(Value::Null),
    };
    *target = merged;
    Ok(())
}

fn is_directive_key(key: &str) -> bool {
    key == PATCH_DIRECTIVE
        || key == RETAIN_KEYS_DIRECTIVE
        || key.starts_with(SET_ELEMENT_ORDER_PREFIX)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
}

fn directive_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The non-null merge-key value of a keyed-list item.
fn key_of<'v>(item: &'v Value, key: &str) -> Option<&'v Value> {
    item.get(key).filter(|v| !v.is_null())
}

/// What a `$patch` directive in a map or list item asks for.
enum Directive {
    Merge,
    Replace,
    Delete,
}

fn map_directive(map: &JsonMap) -> Result<Directive, PatchError> {
    match map.get(PATCH_DIRECTIVE) {
        None => Ok(Directive::Merge),
        Some(value) => match value.as_str() {
            Some("merge") => Ok(Directive::Merge),
            Some("replace") => Ok(Directive::Replace),
            Some("delete") => Ok(Directive::Delete),
            _ => Err(PatchError::UnsupportedDirective(directive_text(value))),
        },
    }
}

/// Strategic merge state: the object kind and the field path being merged.
struct Merger<'a> {
    kind: &'a str,
    path: Vec<String>,
}

impl Merger<'_> {
    fn strategy(&self, field: Option<&str>) -> ListStrategy {
        let mut path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        path.extend(field);
        list_strategy(self.kind, &path)
    }

    fn dotted(&self, field: Option<&str>) -> String {
        let mut path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        path.extend(field);
        path.join(".")
    }

    fn bad_directive(&self, directive: &str, expected: &'static str) -> PatchError {
        PatchError::BadDirectiveValue {
            directive: directive.to_string(),
            path: self.dotted(None),
            expected,
        }
    }

    /// Merges `patch` into `target` (absent when `None`); `None` result means delete.
    fn merge_value(
        &mut self,
        target: Option<Value>,
        patch: &Value,
    ) -> Result<Option<Value>, PatchError> {
        match patch {
            Value::Null => Ok(None),
            Value::Object(patch_map) => {
                let base = match target {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                Ok(self.merge_map(base, patch_map)?.map(Value::Object))
            }
            Value::Array(patch_items) => {
                let base = match target {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                let strategy = self.strategy(None);
                Ok(Some(Value::Array(self.merge_list(
                    base,
                    patch_items,
                    strategy,
                )?)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    /// A patch list item or top-level value applied to nothing: directives and nulls stripped.
    fn clean_item(&mut self, item: &Value) -> Result<Option<Value>, PatchError> {
        match item {
            Value::Object(map) => Ok(self.merge_map(Map::new(), map)?.map(Value::Object)),
            Value::Array(items) => Ok(Some(Value::Array(self.merge_list(
                Vec::new(),
                items,
                ListStrategy::Replace,
            )?))),
            other => Ok(Some(other.clone())),
        }
    }

    /// Merges a patch map; `None` means the map is deleted (`$patch: delete`).
    fn merge_map(
        &mut self,
        target: JsonMap,
        patch: &JsonMap,
    ) -> Result<Option<JsonMap>, PatchError> {
        match map_directive(patch)? {
            Directive::Delete => Ok(None),
            Directive::Replace => self.merge_fields(Map::new(), patch).map(Some),
            Directive::Merge => self.merge_fields(target, patch).map(Some),
        }
    }

    fn merge_fields(
        &mut self,
        mut target: JsonMap,
        patch: &JsonMap,
    ) -> Result<JsonMap, PatchError> {
        let mut retain: Option<Vec<&str>> = None;
        for (key, value) in patch {
            if key == RETAIN_KEYS_DIRECTIVE {
                let list = value
                    .as_array()
                    .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| self.bad_directive(key, "a list of strings"))?;
                retain = Some(list);
                continue;
            }
            if is_directive_key(key) {
                continue;
            }
            if value.is_null() {
                target.shift_remove(key);
                continue;
            }
            let old = target.get_mut(key).map(std::mem::take);
            self.path.push(key.clone());
            let merged = self.merge_value(old, value);
            self.path.pop();
            match merged? {
                Some(new) => {
                    target.insert(key.clone(), new);
                }
                None => {
                    target.shift_remove(key);
                }
            }
        }
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST_PREFIX) else {
                continue;
            };
            let Value::Array(doomed) = value else {
                return Err(self.bad_directive(key, "a list"));
            };
            if let Some(Value::Array(items)) = target.get_mut(field) {
                items.retain(|item| !doomed.contains(item));
            }
        }
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER_PREFIX) else {
                continue;
            };
            let Value::Array(order) = value else {
                return Err(self.bad_directive(key, "a list"));
            };
            let merge_key = match self.strategy(Some(field)) {
                ListStrategy::MergeByKey(k) => Some(k),
                _ => None,
            };
            if let Some(Value::Array(items)) = target.get_mut(field) {
                let permutation = order_permutation(items, order, merge_key);
                let taken = std::mem::take(items);
                *items = apply_permutation(taken, &permutation);
            }
        }
        if let Some(keep) = retain {
            target.retain(|key, _| keep.contains(&key.as_str()));
        }
        Ok(target)
    }

    fn merge_list(
        &mut self,
        target: Vec<Value>,
        patch: &[Value],
        strategy: ListStrategy,
    ) -> Result<Vec<Value>, PatchError> {
        let mut replace = false;
        let mut deletions: Vec<&JsonMap> = Vec::new();
        let mut items: Vec<&Value> = Vec::new();
        for item in patch {
            if let Value::Object(map) = item {
                match map_directive(map)? {
                    Directive::Replace => {
                        replace = true;
                        continue;
                    }
                    Directive::Delete => {
                        deletions.push(map);
                        continue;
                    }
                    Directive::Merge => {}
                }
            }
            items.push(item);
        }
        match strategy {
            ListStrategy::MergeByKey(key) if !replace => {
                let mut out = target;
                for deletion in deletions {
                    let doomed = deletion
                        .get(key)
                        .filter(|v| !v.is_null())
                        .ok_or_else(|| self.missing_key(key))?;
                    out.retain(|item| key_of(item, key) != Some(doomed));
                }
                for item in items {
                    let Value::Object(item_map) = item else {
                        return Err(self.missing_key(key));
                    };
                    let wanted = key_of(item, key).ok_or_else(|| self.missing_key(key))?;
                    match out
                        .iter()
                        .position(|have| key_of(have, key) == Some(wanted))
                    {
                        Some(at) => {
                            let old = match out.get_mut(at).map(std::mem::take) {
                                Some(Value::Object(map)) => map,
                                _ => Map::new(),
                            };
                            match self.merge_map(old, item_map)? {
                                Some(map) => {
                                    if let Some(slot) = out.get_mut(at) {
                                        *slot = Value::Object(map);
                                    }
                                }
                                None => {
                                    out.remove(at);
                                }
                            }
                        }
                        None => {
                            if let Some(map) = self.merge_map(Map::new(), item_map)? {
                                out.push(Value::Object(map));
                            }
                        }
                    }
                }
                Ok(out)
            }
            ListStrategy::MergePrimitives if !replace => {
                let mut out = target;
                for item in items {
                    if let Some(clean) = self.clean_item(item)?
                        && !out.contains(&clean)
                    {
                        out.push(clean);
                    }
                }
                Ok(out)
            }
            _ => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.extend(self.clean_item(item)?);
                }
                Ok(out)
            }
        }
    }

    fn missing_key(&self, key: &str) -> PatchError {
        PatchError::MissingMergeKey {
            list: self.dotted(None),
            key: key.to_string(),
        }
    }
}

/// Does `$setElementOrder` entry `entry` name list item `item`?
fn order_matches(entry: &Value, item: &Value, merge_key: Option<&str>) -> bool {
    match merge_key {
        Some(key) => {
            matches!((key_of(entry, key), key_of(item, key)), (Some(a), Some(b)) if a == b)
        }
        None => entry == item,
    }
}

/// Indices of `items` in their new order: those named by `order` first, the rest after in their old order.
fn order_permutation(items: &[Value], order: &[Value], merge_key: Option<&str>) -> Vec<usize> {
    let mut used = vec![false; items.len()];
    let mut permutation = Vec::with_capacity(items.len());
    for entry in order {
        for (i, item) in items.iter().enumerate() {
            if let Some(flag) = used.get_mut(i)
                && !*flag
                && order_matches(entry, item, merge_key)
            {
                *flag = true;
                permutation.push(i);
            }
        }
    }
    permutation.extend(
        used.iter()
            .enumerate()
            .filter(|(_, u)| !**u)
            .map(|(i, _)| i),
    );
    permutation
}

fn apply_permutation(items: Vec<Value>, permutation: &[usize]) -> Vec<Value> {
    let mut slots: Vec<Option<Value>> = items.into_iter().map(Some).collect();
    permutation
        .iter()
        .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

fn is_identity(permutation: &[usize]) -> bool {
    permutation.iter().enumerate().all(|(i, &p)| i == p)
}

// ---------------------------------------------------------------------------
// Three-way merge (client-side apply)
// ---------------------------------------------------------------------------

/// Computes the strategic merge patch client-side apply sends: `current` made to match `modified`, dropping what `original` had and `modified` lost; `{}` when nothing changes.
pub fn three_way_merge_patch(
    original: Option<&Value>,
    modified: &Value,
    current: &Value,
    kind: &str,
) -> Result<Value, PatchError> {
    let Value::Object(_) = modified else {
        return Err(PatchError::NotAnObject("modified"));
    };
    let Value::Object(current_map) = current else {
        return Err(PatchError::NotAnObject("current"));
    };
    let Value::Object(modified_map) = without_nulls(modified) else {
        return Err(PatchError::NotAnObject("modified"));
    };
    let original_map = original.and_then(Value::as_object);
    let mut differ = Differ {
        kind,
        path: Vec::new(),
    };
    let patch = Value::Object(differ.diff_map(original_map, &modified_map, current_map)?);
    // Make sure the patch applies (e.g. every keyed-list item carries its merge key).
    let mut probe = current.clone();
    strategic_merge_patch(&mut probe, &patch, kind)?;
    Ok(patch)
}

/// `value` with every null map entry removed, recursively.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Three-way diff state: the object kind and the field path being compared.
struct Differ<'a> {
    kind: &'a str,
    path: Vec<String>,
}

impl Differ<'_> {
    fn strategy(&self) -> ListStrategy {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        list_strategy(self.kind, &path)
    }

    fn missing_key(&self, key: &str) -> PatchError {
        PatchError::MissingMergeKey {
            list: self.path.join("."),
            key: key.to_string(),
        }
    }

    fn diff_map(
        &mut self,
        original: Option<&JsonMap>,
        modified: &JsonMap,
        current: &JsonMap,
    ) -> Result<JsonMap, PatchError> {
        let mut patch = Map::new();
        for (key, wanted) in modified {
            let have = current.get(key);
            let had = original.and_then(|o| o.get(key));
            match (wanted, have) {
                (Value::Object(wanted_map), Some(Value::Object(have_map))) => {
                    self.path.push(key.clone());
                    let sub = self.diff_map(had.and_then(Value::as_object), wanted_map, have_map);
                    self.path.pop();
                    let sub = sub?;
                    if !sub.is_empty() {
                        patch.insert(key.clone(), Value::Object(sub));
                    }
                }
                (Value::Array(wanted_items), Some(Value::Array(have_items))) => {
                    self.path.push(key.clone());
                    let result = self.diff_list(
                        key,
                        had.and_then(Value::as_array).map(Vec::as_slice),
                        wanted_items,
                        have_items,
                        &mut patch,
                    );
                    self.path.pop();
                    result?;
                }
                (_, Some(have)) if have == wanted => {}
                _ => {
                    patch.insert(key.clone(), wanted.clone());
                }
            }
        }
        if let Some(original) = original {
            for key in original.keys() {
                if !modified.contains_key(key) && current.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
        }
        // kubectl names the keys to keep in a retainKeys map whenever it changes, so the
        // server clears what the manifest no longer sets there (rollingUpdate on Recreate).
        let dropped = original.is_some_and(|o| o.keys().any(|k| !modified.contains_key(k)));
        if self.retains_keys() && (!patch.is_empty() || dropped) {
            let mut keys: Vec<&String> = modified
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            let keys = keys.into_iter().map(|k| Value::from(k.as_str())).collect();
            patch.insert(RETAIN_KEYS_DIRECTIVE.to_string(), Value::Array(keys));
        }
        Ok(patch)
    }

    /// Whether the map at the current path has `patchStrategy: retainKeys` (a Deployment's
    /// strategy, and each item of a PodSpec's volumes).
    fn retains_keys(&self) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        match path.split_last() {
            Some((&"strategy", ["spec"])) => self.kind == "Deployment",
            Some((&"volumes", parents)) => pod_spec_rest(self.kind, parents) == Some(&[][..]),
            _ => false,
        }
    }

    fn diff_list(
        &mut self,
        field: &str,
        original: Option<&[Value]>,
        modified: &[Value],
        current: &[Value],
        patch: &mut JsonMap,
    ) -> Result<(), PatchError> {
        let order_key = format!("{SET_ELEMENT_ORDER_PREFIX}{field}");
        match self.strategy() {
            ListStrategy::Replace => {
                if modified != current {
                    patch.insert(field.to_string(), Value::Array(modified.to_vec()));
                }
            }
            ListStrategy::MergePrimitives => {
                let mut additions: Vec<Value> = Vec::new();
                for item in modified {
                    if !current.contains(item) && !additions.contains(item) {
                        additions.push(item.clone());
                    }
                }
                let mut deletions: Vec<Value> = Vec::new();
                for item in original.unwrap_or_default() {
                    if !modified.contains(item)
                        && current.contains(item)
                        && !deletions.contains(item)
                    {
                        deletions.push(item.clone());
                    }
                }
                let mut simulated: Vec<Value> = current
                    .iter()
                    .filter(|item| !deletions.contains(item))
                    .cloned()
                    .collect();
                simulated.extend(additions.iter().cloned());
                let reordered = !is_identity(&order_permutation(&simulated, modified, None));
                let changed = !additions.is_empty() || !deletions.is_empty();
                if changed || reordered {
                    patch.insert(order_key, Value::Array(modified.to_vec()));
                }
                if !additions.is_empty() {
                    patch.insert(field.to_string(), Value::Array(additions));
                }
                if !deletions.is_empty() {
                    patch.insert(
                        format!("{DELETE_FROM_PRIMITIVE_LIST_PREFIX}{field}"),
                        Value::Array(deletions),
                    );
                }
            }
            ListStrategy::MergeByKey(key) => {
                let find = |list: &'_ [Value], wanted: &Value| -> Option<usize> {
                    list.iter()
                        .position(|item| key_of(item, key) == Some(wanted))
                };
                let mut items: Vec<Value> = Vec::new();
                let mut order: Vec<Value> = Vec::with_capacity(modified.len());
                let mut simulated: Vec<Value> = Vec::new();
                for wanted in modified {
                    let Value::Object(wanted_map) = wanted else {
                        return Err(self.missing_key(key));
                    };
                    let wanted_key = key_of(wanted, key).ok_or_else(|| self.missing_key(key))?;
                    let mut stub = Map::new();
                    stub.insert(key.to_string(), wanted_key.clone());
                    order.push(Value::Object(stub));
                    match find(current, wanted_key).and_then(|at| current.get(at)) {
                        Some(Value::Object(have_map)) => {
                            let had = original
                                .and_then(|o| find(o, wanted_key).and_then(|at| o.get(at)))
                                .and_then(Value::as_object);
                            let mut sub = self.diff_map(had, wanted_map, have_map)?;
                            if !sub.is_empty() {
                                sub.insert(key.to_string(), wanted_key.clone());
                                items.push(Value::Object(sub));
                            }
                        }
                        _ => {
                            items.push(wanted.clone());
                            if let Some(stub) = order.last() {
                                simulated.push(stub.clone());
                            }
                        }
                    }
                }
                let mut deleted: Vec<&Value> = Vec::new();
                for had in original.unwrap_or_default() {
                    let Some(had_key) = key_of(had, key) else {
                        continue;
                    };
                    if find(modified, had_key).is_none()
                        && find(current, had_key).is_some()
                        && !deleted.contains(&had_key)
                    {
                        deleted.push(had_key);
                        let mut directive = Map::new();
                        directive.insert(PATCH_DIRECTIVE.to_string(), Value::from("delete"));
                        directive.insert(key.to_string(), had_key.clone());
                        items.push(Value::Object(directive));
                    }
                }
                let kept: Vec<Value> = current
                    .iter()
                    .filter(|item| !key_of(item, key).is_some_and(|k| deleted.contains(&k)))
                    .map(|item| {
                        let mut stub = Map::new();
                        if let Some(k) = key_of(item, key) {
                            stub.insert(key.to_string(), k.clone());
                        }
                        Value::Object(stub)
                    })
                    .collect();
                let simulated: Vec<Value> = kept.into_iter().chain(simulated).collect();
                let reordered = !is_identity(&order_permutation(&simulated, &order, Some(key)));
                if !items.is_empty() || reordered {
                    patch.insert(order_key, Value::Array(order));
                }
                if !items.is_empty() {
                    patch.insert(field.to_string(), Value::Array(items));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn smp(mut target: Value, patch: Value, kind: &str) -> Value {
        strategic_merge_patch(&mut target, &patch, kind).unwrap();
        target
    }

    fn jp(mut target: Value, patch: Value) -> Result<Value, PatchError> {
        json_patch(&mut target, &patch).map(|()| target)
    }

    // ----- RFC 7386 -------------------------------------------------------

    #[test]
    fn merge_patch_follows_the_rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut doc = target.clone();
            merge_patch(&mut doc, &patch);
            assert_eq!(doc, expected, "{target} + {patch}");
        }
    }

    // ----- RFC 6902 -------------------------------------------------------

    #[test]
    fn json_patch_add_inserts_into_objects_and_arrays() {
        let doc = json!({"a": {"b": 1}, "l": [1, 2]});
        let out = jp(
            doc,
            json!([
                {"op": "add", "path": "/a/c", "value": 2},
                {"op": "add", "path": "/l/1", "value": 9},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "add", "path": "/l/0", "value": 0},
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": 1, "c": 2}, "l": [0, 1, 9, 2, 3]}));
    }

    #[test]
    fn json_patch_add_at_root_replaces_the_document() {
        assert_eq!(
            jp(
                json!({"a": 1}),
                json!([{"op": "add", "path": "", "value": [1]}])
            )
            .unwrap(),
            json!([1])
        );
    }

    #[test]
    fn json_patch_add_replaces_an_existing_member() {
        assert_eq!(
            jp(
                json!({"a": 1}),
                json!([{"op": "add", "path": "/a", "value": 2}])
            )
            .unwrap(),
            json!({"a": 2})
        );
    }

    #[test]
    fn json_patch_remove_deletes_members_and_elements() {
        let out = jp(
            json!({"a": 1, "b": 2, "l": [1, 2, 3]}),
            json!([{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/l/1"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"b": 2, "l": [1, 3]}));
    }

    #[test]
    fn json_patch_remove_of_a_missing_path_names_the_operation() {
        let err = jp(
            json!({"spec": {}}),
            json!([
                {"op": "test", "path": "/spec", "value": {}},
                {"op": "add", "path": "/x", "value": 1},
                {"op": "remove", "path": "/spec/foo"},
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "json patch operation 2 (remove): path \"/spec/foo\" does not exist"
        );
    }

    #[test]
    fn json_patch_replace_requires_an_existing_target() {
        assert_eq!(
            jp(
                json!({"a": [1, 2]}),
                json!([{"op": "replace", "path": "/a/1", "value": 5}])
            )
            .unwrap(),
            json!({"a": [1, 5]})
        );
        assert!(matches!(
            jp(
                json!({}),
                json!([{"op": "replace", "path": "/a", "value": 5}])
            ),
            Err(PatchError::PathNotFound { op: "replace", .. })
        ));
    }

    #[test]
    fn json_patch_move_relocates_a_value() {
        let out = jp(
            json!({"a": {"b": 1}, "c": []}),
            json!([{"op": "move", "from": "/a/b", "path": "/c/0"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {}, "c": [1]}));
    }

    #[test]
    fn json_patch_move_into_its_own_child_is_an_error() {
        let err = jp(
            json!({"a": {"b": {}}}),
            json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::MoveIntoChild { index: 0, .. }));
    }

    #[test]
    fn json_patch_copy_duplicates_a_value() {
        let out = jp(
            json!({"a": {"x": [1]}}),
            json!([{"op": "copy", "from": "/a", "path": "/b"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"x": [1]}, "b": {"x": [1]}}));
    }

    #[test]
    fn json_patch_test_compares_numbers_by_value() {
        assert!(
            jp(
                json!({"a": 1}),
                json!([{"op": "test", "path": "/a", "value": 1.0}])
            )
            .is_ok()
        );
    }

    #[test]
    fn json_patch_failing_test_leaves_the_target_unchanged() {
        let mut doc = json!({"a": 1, "b": [1]});
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/c", "value": 3},
                {"op": "remove", "path": "/b/0"},
                {"op": "test", "path": "/a", "value": 2},
            ]),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "test operation 2 failed at \"/a\"");
        assert_eq!(doc, before);
    }

    #[test]
    fn json_patch_unescapes_tilde_zero_and_tilde_one() {
        let out = jp(
            json!({"a/b": 1, "m~n": 2}),
            json!([
                {"op": "replace", "path": "/a~1b", "value": 10},
                {"op": "replace", "path": "/m~0n", "value": 20},
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"a/b": 10, "m~n": 20}));
    }

    #[test]
    fn json_patch_rejects_a_pointer_without_a_leading_slash() {
        let err = jp(json!({}), json!([{"op": "add", "path": "a/b", "value": 1}])).unwrap_err();
        assert_eq!(err.to_string(), "invalid JSON pointer \"a/b\"");
        assert!(matches!(
            jp(
                json!({}),
                json!([{"op": "add", "path": "/a~2", "value": 1}])
            ),
            Err(PatchError::InvalidPointer(_))
        ));
    }

    #[test]
    fn json_patch_checks_array_bounds() {
        let err = jp(
            json!({"l": [1]}),
            json!([{"op": "add", "path": "/l/2", "value": 1}]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PatchError::IndexOutOfBounds { op: "add", .. }
        ));
        let err = jp(json!({"l": [1]}), json!([{"op": "remove", "path": "/l/1"}])).unwrap_err();
        assert!(matches!(
            err,
            PatchError::IndexOutOfBounds { op: "remove", .. }
        ));
        let err = jp(
            json!({"l": [1, 2]}),
            json!([{"op": "remove", "path": "/l/01"}]),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::PathNotFound { .. }));
        let err = jp(
            json!({"l": []}),
            json!([{"op": "add", "path": "/l/99999999999999999999999", "value": 1}]),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::IndexOutOfBounds { .. }));
    }

    #[test]
    fn json_patch_must_be_an_array_of_objects() {
        assert_eq!(
            jp(json!({}), json!({"op": "add"})),
            Err(PatchError::NotAnArray)
        );
        assert!(matches!(
            jp(json!({}), json!([1])),
            Err(PatchError::InvalidOperation { index: 0, .. })
        ));
        assert!(matches!(
            jp(json!({}), json!([{"op": "frob", "path": "/a"}])),
            Err(PatchError::InvalidOperation { index: 0, .. })
        ));
        assert!(matches!(
            jp(json!({}), json!([{"op": "add", "path": "/a"}])),
            Err(PatchError::InvalidOperation { index: 0, .. })
        ));
        assert!(matches!(
            jp(json!({}), json!([{"op": "add", "value": 1}])),
            Err(PatchError::InvalidOperation { index: 0, .. })
        ));
    }

    // ----- strategic merge patch: directives --------------------------------

    #[test]
    fn strategic_null_deletes_a_key_and_maps_merge() {
        let out = smp(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn strategic_non_object_patch_replaces_the_target() {
        assert_eq!(smp(json!({"a": 1}), json!([1, 2]), "Pod"), json!([1, 2]));
        assert_eq!(smp(json!({"a": 1}), json!("x"), "Pod"), json!("x"));
    }

    #[test]
    fn strategic_patch_replace_in_a_map_replaces_the_map() {
        let out = smp(
            json!({"data": {"a": "1", "b": "2"}}),
            json!({"data": {"$patch": "replace", "c": "3"}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"data": {"c": "3"}}));
    }

    #[test]
    fn strategic_patch_delete_in_a_map_deletes_the_map() {
        let out = smp(
            json!({"data": {"a": "1"}, "kind": "ConfigMap"}),
            json!({"data": {"$patch": "delete"}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"kind": "ConfigMap"}));
    }

    #[test]
    fn strategic_patch_merge_is_the_default() {
        let out = smp(
            json!({"data": {"a": "1"}}),
            json!({"data": {"$patch": "merge", "b": "2"}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"data": {"a": "1", "b": "2"}}));
    }

    #[test]
    fn strategic_unknown_patch_directive_is_an_error() {
        let mut doc = json!({"data": {"a": "1"}});
        let before = doc.clone();
        let err =
            strategic_merge_patch(&mut doc, &json!({"data": {"$patch": "frob"}}), "ConfigMap")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "strategic merge patch: $patch directive \"frob\" is not supported"
        );
        assert_eq!(doc, before);
    }

    #[test]
    fn strategic_keyed_list_merges_by_key_and_appends_new_items() {
        let out = smp(
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
            json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x"},
                {"name": "b", "image": "z"},
                {"name": "c", "image": "w"},
            ]}})
        );
    }

    #[test]
    fn strategic_keyed_list_item_without_merge_key_is_an_error() {
        let mut doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = strategic_merge_patch(
            &mut doc,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            "Pod",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "strategic merge patch: list \"spec.containers\" item is missing merge key \"name\""
        );
    }

    #[test]
    fn strategic_replace_directive_in_a_list_replaces_the_list() {
        let out = smp(
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "w"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn strategic_replace_strategy_lists_are_replaced() {
        let out = smp(
            json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "args": ["1", "2"]}]}}),
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "args": ["3"]}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "args": ["3"]}]}})
        );
    }

    #[test]
    fn strategic_primitive_list_is_a_union_and_delete_from_primitive_list_removes() {
        let out = smp(
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}}),
            "ConfigMap",
        );
        assert_eq!(out, json!({"metadata": {"finalizers": ["a", "c"]}}));
    }

    #[test]
    fn strategic_set_element_order_orders_keyed_lists() {
        let out = smp(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "s"}]}}),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
                "containers": [{"name": "c"}],
            }}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}, {"name": "s"}]}})
        );
    }

    #[test]
    fn strategic_set_element_order_orders_primitive_lists() {
        let out = smp(
            json!({"metadata": {"finalizers": ["a", "b", "x"]}}),
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"]}}),
            "Pod",
        );
        assert_eq!(out, json!({"metadata": {"finalizers": ["b", "a", "x"]}}));
    }

    #[test]
    fn strategic_set_element_order_must_be_a_list() {
        let mut doc = json!({});
        let err = strategic_merge_patch(
            &mut doc,
            &json!({"spec": {"$setElementOrder/containers": 1}}),
            "Pod",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::BadDirectiveValue { .. }));
    }

    #[test]
    fn strategic_retain_keys_drops_unlisted_keys() {
        let out = smp(
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            "Deployment",
        );
        assert_eq!(out, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    }

    #[test]
    fn strategic_directives_never_reach_the_output_for_new_fields() {
        let out = smp(
            json!({}),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a", "env": [{"name": "E", "value": "1", "x": null}]}, {"$patch": "delete", "name": "z"}],
                "extra": {"$patch": "replace", "k": {"$retainKeys": ["q"], "q": 1}},
            }}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {
                "containers": [{"name": "a", "env": [{"name": "E", "value": "1"}]}],
                "extra": {"k": {"q": 1}},
            }})
        );
    }

    // ----- strategic merge patch: kubectl examples ----------------------------

    #[test]
    fn kubectl_cordon_and_uncordon_a_node() {
        let node = json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "100.64.0.0/24"}});
        let cordoned = smp(node, json!({"spec": {"unschedulable": true}}), "Node");
        assert_eq!(cordoned["spec"]["unschedulable"], json!(true));
        let uncordoned = smp(cordoned, json!({"spec": {"unschedulable": null}}), "Node");
        assert_eq!(uncordoned["spec"], json!({"podCIDR": "100.64.0.0/24"}));
    }

    fn deployment() -> Value {
        json!({
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                "name": "web",
                "image": "nginx:1.25",
                "ports": [{"containerPort": 80}],
                "env": [{"name": "A", "value": "1"}],
            }]}}},
            "status": {"replicas": 2},
        })
    }

    #[test]
    fn kubectl_apply_patch_on_a_deployment_keeps_ports_removes_env_and_changes_image() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"env":null,"image":"nginx:1.26","name":"web"}]}}}}),
            "Deployment",
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx:1.26", "ports": [{"containerPort": 80}]}])
        );
        assert_eq!(out["status"], json!({"replicas": 2}));
    }

    #[test]
    fn kubectl_merges_a_new_env_var_by_name_into_a_pod_container() {
        let pod = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}, {"name": "side"}]}});
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"name": "app", "env": [{"name": "C", "value": "3"}, {"name": "A", "value": "9"}]}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "app", "env": [
                {"name": "A", "value": "9"},
                {"name": "B", "value": "2"},
                {"name": "C", "value": "3"},
            ]}, {"name": "side"}]}})
        );
    }

    #[test]
    fn kubectl_deletes_one_container_with_patch_delete() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"$patch": "delete", "name": "a"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b", "image": "y"}]}})
        );
    }

    // ----- list strategy table ---------------------------------------------------

    #[test]
    fn list_strategy_knows_the_built_in_merge_keys() {
        use ListStrategy::{MergeByKey, MergePrimitives, Replace};
        let cases: &[(&str, &[&str], ListStrategy)] = &[
            ("Pod", &["spec", "containers"], MergeByKey("name")),
            ("Pod", &["spec", "initContainers"], MergeByKey("name")),
            ("Pod", &["spec", "ephemeralContainers"], MergeByKey("name")),
            ("Pod", &["spec", "volumes"], MergeByKey("name")),
            ("Pod", &["spec", "imagePullSecrets"], MergeByKey("name")),
            ("Pod", &["spec", "hostAliases"], MergeByKey("ip")),
            (
                "Pod",
                &["spec", "topologySpreadConstraints"],
                MergeByKey("topologyKey"),
            ),
            ("Pod", &["spec", "resourceClaims"], MergeByKey("name")),
            ("Pod", &["spec", "schedulingGates"], MergeByKey("name")),
            ("Pod", &["spec", "tolerations"], Replace),
            ("Pod", &["spec", "readinessGates"], Replace),
            (
                "Pod",
                &["spec", "containers", "ports"],
                MergeByKey("containerPort"),
            ),
            ("Pod", &["spec", "containers", "env"], MergeByKey("name")),
            (
                "Pod",
                &["spec", "initContainers", "volumeMounts"],
                MergeByKey("mountPath"),
            ),
            (
                "Pod",
                &["spec", "containers", "volumeDevices"],
                MergeByKey("devicePath"),
            ),
            ("Pod", &["spec", "containers", "envFrom"], Replace),
            ("Pod", &["spec", "containers", "resizePolicy"], Replace),
            ("Pod", &["spec", "containers", "command"], Replace),
            ("Pod", &["spec", "containers", "args"], Replace),
            ("Pod", &["status", "conditions"], MergeByKey("type")),
            ("Pod", &["status", "podIPs"], MergeByKey("ip")),
            ("Pod", &["status", "containerStatuses"], Replace),
            (
                "Deployment",
                &["spec", "template", "spec", "containers"],
                MergeByKey("name"),
            ),
            (
                "Deployment",
                &["spec", "template", "spec", "containers", "env"],
                MergeByKey("name"),
            ),
            (
                "StatefulSet",
                &["spec", "template", "spec", "volumes"],
                MergeByKey("name"),
            ),
            (
                "DaemonSet",
                &["spec", "template", "spec", "initContainers"],
                MergeByKey("name"),
            ),
            (
                "Job",
                &["spec", "template", "spec", "containers", "ports"],
                MergeByKey("containerPort"),
            ),
            (
                "CronJob",
                &[
                    "spec",
                    "jobTemplate",
                    "spec",
                    "template",
                    "spec",
                    "containers",
                ],
                MergeByKey("name"),
            ),
            (
                "Deployment",
                &["spec", "template", "metadata", "finalizers"],
                MergePrimitives,
            ),
            ("Deployment", &["status", "conditions"], MergeByKey("type")),
            ("Deployment", &["spec", "containers"], Replace),
            ("Service", &["spec", "ports"], MergeByKey("port")),
            ("Service", &["spec", "externalIPs"], Replace),
            ("ConfigMap", &["metadata", "finalizers"], MergePrimitives),
            (
                "ConfigMap",
                &["metadata", "ownerReferences"],
                MergeByKey("uid"),
            ),
            ("ConfigMap", &["metadata", "managedFields"], Replace),
            ("Node", &["status", "addresses"], MergeByKey("type")),
            ("Node", &["status", "conditions"], MergeByKey("type")),
            ("Node", &["spec", "taints"], Replace),
            ("Node", &["spec", "podCIDRs"], MergePrimitives),
            ("Widget", &["spec", "items"], Replace),
            ("Widget", &[], Replace),
        ];
        for (kind, path, expected) in cases {
            assert_eq!(list_strategy(kind, path), *expected, "{kind} {path:?}");
        }
    }

    // ----- three-way merge ----------------------------------------------------------

    #[test]
    fn three_way_produces_the_kubectl_deployment_patch() {
        let mut original = deployment();
        original.as_object_mut().unwrap().shift_remove("status");
        let mut modified = original.clone();
        modified["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26");
        modified["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .shift_remove("env");
        let mut current = deployment();
        current["metadata"]["uid"] = json!("123");
        let patch =
            three_way_merge_patch(Some(&original), &modified, &current, "Deployment").unwrap();
        assert_eq!(
            patch,
            json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"env":null,"image":"nginx:1.26","name":"web"}]}}}})
        );
        let applied = smp(current, patch, "Deployment");
        assert_eq!(applied["metadata"]["uid"], json!("123"));
        assert_eq!(applied["status"], json!({"replicas": 2}));
        assert_eq!(
            three_way_merge_patch(Some(&modified), &modified, &applied, "Deployment").unwrap(),
            json!({})
        );
    }

    #[test]
    fn three_way_retains_only_the_strategy_keys_the_manifest_sets() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate"}}});
        let modified = json!({"spec": {"strategy": {"type": "Recreate"}}});
        let mut current = json!({"spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        let p = three_way_merge_patch(Some(&original), &modified, &current, "Deployment").unwrap();
        assert_eq!(
            p,
            json!({"spec": {"strategy": {"type": "Recreate", "$retainKeys": ["type"]}}})
        );
        strategic_merge_patch(&mut current, &p, "Deployment").unwrap();
        assert_eq!(current, json!({"spec": {"strategy": {"type": "Recreate"}}}));
        // Unchanged: no directive at all.
        let same =
            three_way_merge_patch(Some(&modified), &modified, &current, "Deployment").unwrap();
        assert_eq!(same, json!({}));
    }

    #[test]
    fn three_way_is_empty_when_nothing_changes() {
        let manifest = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let mut live = manifest.clone();
        live["metadata"]["uid"] = json!("u");
        live["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(
            three_way_merge_patch(Some(&manifest), &manifest, &live, "ConfigMap").unwrap(),
            json!({})
        );
        assert_eq!(
            three_way_merge_patch(None, &manifest, &live, "ConfigMap").unwrap(),
            json!({})
        );
    }

    #[test]
    fn three_way_deletes_fields_and_keyed_items_dropped_from_the_manifest() {
        let original = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let modified =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "a"}]}});
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2", "server": "x"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "injected"}]}});
        let patch = three_way_merge_patch(Some(&original), &modified, &current, "Pod").unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {"labels": {"b": null}},
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}],
                    "containers": [{"$patch": "delete", "name": "b"}],
                },
            })
        );
        let applied = smp(current, patch, "Pod");
        assert_eq!(
            applied,
            json!({"metadata": {"labels": {"a": "1", "server": "x"}}, "spec": {"containers": [{"name": "a"}, {"name": "injected"}]}})
        );
    }

    #[test]
    fn three_way_adds_and_removes_finalizers() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let modified = json!({"metadata": {"finalizers": ["a", "c"]}});
        let current = json!({"metadata": {"finalizers": ["a", "b", "server"]}});
        let patch =
            three_way_merge_patch(Some(&original), &modified, &current, "ConfigMap").unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["a", "c"],
                "finalizers": ["c"],
                "$deleteFromPrimitiveList/finalizers": ["b"],
            }})
        );
        let applied = smp(current, patch, "ConfigMap");
        assert_eq!(
            applied,
            json!({"metadata": {"finalizers": ["a", "c", "server"]}})
        );
    }

    #[test]
    fn three_way_rejects_non_objects_and_items_without_merge_keys() {
        assert_eq!(
            three_way_merge_patch(None, &json!([]), &json!({}), "Pod"),
            Err(PatchError::NotAnObject("modified"))
        );
        assert_eq!(
            three_way_merge_patch(None, &json!({}), &json!(1), "Pod"),
            Err(PatchError::NotAnObject("current"))
        );
        assert!(matches!(
            three_way_merge_patch(
                None,
                &json!({"spec": {"containers": [{"image": "x"}]}}),
                &json!({}),
                "Pod"
            ),
            Err(PatchError::MissingMergeKey { .. })
        ));
    }

    // ----- property tests -------------------------------------------------------------

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ]
    }

    fn non_null_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ]
    }

    fn object(entries: std::collections::BTreeMap<String, Value>) -> Value {
        Value::Object(entries.into_iter().collect())
    }

    /// Objects of objects and scalars (no lists), with the given leaves.
    fn map_doc(leaf: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
        let tree = leaf.prop_recursive(3, 24, 4, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4).prop_map(object)
        });
        prop::collection::btree_map("[a-d]", tree, 0..4).prop_map(object)
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]",
            Just("name".to_string()),
            Just("spec".to_string()),
            Just("containers".to_string()),
            Just("finalizers".to_string()),
            Just("$patch".to_string()),
            Just("$retainKeys".to_string()),
            Just("$setElementOrder/a".to_string()),
            Just("$setElementOrder/containers".to_string()),
            Just("$deleteFromPrimitiveList/finalizers".to_string()),
        ]
    }

    fn any_json(keys: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            scalar(),
            prop_oneof![Just("replace"), Just("delete"), Just("merge")].prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..4).prop_map(object),
            ]
        })
    }

    fn plain_json() -> impl Strategy<Value = Value> {
        any_json(prop_oneof!["[a-c]", Just("name".to_string()), Just("spec".to_string())].boxed())
    }

    fn pointer() -> impl Strategy<Value = String> {
        prop_oneof![
            "(/([a-c]|[0-2]|-|~0|~1|~|01)){0,3}",
            Just("a/b".to_string()),
        ]
    }

    fn json_patch_doc() -> impl Strategy<Value = Value> {
        let op = (
            prop_oneof![
                Just("add"),
                Just("remove"),
                Just("replace"),
                Just("move"),
                Just("copy"),
                Just("test"),
                Just("frob")
            ],
            pointer(),
            prop::option::of(pointer()),
            prop::option::of(plain_json()),
        )
            .prop_map(|(op, path, from, value)| {
                let mut map = Map::new();
                map.insert("op".into(), json!(op));
                map.insert("path".into(), json!(path));
                if let Some(from) = from {
                    map.insert("from".into(), json!(from));
                }
                if let Some(value) = value {
                    map.insert("value".into(), value);
                }
                Value::Object(map)
            });
        prop_oneof![
            4 => prop::collection::vec(op, 0..5).prop_map(Value::Array),
            1 => plain_json(),
        ]
    }

    /// Every path to a non-object value (or an empty object) in `doc`.
    fn leaves(doc: &Value, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
        match doc {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    prefix.push(k.clone());
                    leaves(v, prefix, out);
                    prefix.pop();
                }
            }
            other => out.push((prefix.clone(), other.clone())),
        }
    }

    fn at<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
        path.iter().try_fold(doc, |cur, k| cur.as_object()?.get(k))
    }

    fn has_directive(doc: &Value) -> bool {
        match doc {
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| is_directive_key(k) || has_directive(v)),
            Value::Array(items) => items.iter().any(has_directive),
            _ => false,
        }
    }

    fn container_list(names: Vec<(String, Option<String>)>) -> Value {
        Value::Array(
            names
                .into_iter()
                .map(|(name, image)| match image {
                    Some(image) => json!({"name": name, "image": image}),
                    None => json!({"name": name}),
                })
                .collect(),
        )
    }

    /// Pod-shaped documents with unique container names and finalizers.
    fn pod_doc() -> impl Strategy<Value = Value> {
        (
            prop::collection::btree_map("[a-c]", non_null_scalar(), 0..3),
            prop::collection::btree_set("[a-d]", 0..4),
            prop::collection::btree_map("[a-e]", prop::option::of("[xyz]"), 0..4),
            prop::option::of(non_null_scalar()),
            any::<bool>(),
        )
            .prop_map(|(labels, finalizers, containers, x, reverse)| {
                let mut containers: Vec<_> = containers.into_iter().collect();
                if reverse {
                    containers.reverse();
                }
                let mut spec = json!({"containers": container_list(containers)});
                if let Some(x) = x {
                    spec["x"] = x;
                }
                json!({
                    "metadata": {"labels": object(labels), "finalizers": finalizers.into_iter().collect::<Vec<_>>()},
                    "spec": spec,
                })
            })
    }

    /// Strategic patches against `pod_doc` shapes, using every directive.
    fn pod_patch() -> impl Strategy<Value = Value> {
        let item = ("[a-e]", 0..4u8, "[xyz]").prop_map(|(name, action, image)| match action {
            0 => json!({"name": name, "image": image}),
            1 => json!({"$patch": "delete", "name": name}),
            2 => json!({"name": name, "image": null}),
            _ => json!({"name": name, "extra": {"k": image}}),
        });
        (
            prop::collection::btree_map("[a-c]", scalar(), 0..3),
            prop::collection::vec("[a-d]", 0..3),
            prop::collection::vec("[a-d]", 0..2),
            prop::option::of(prop::collection::vec(item, 0..4)),
            prop::option::of(prop::collection::vec("[a-e]", 0..4)),
            prop::option::of(scalar()),
        )
            .prop_map(|(labels, add, remove, containers, order, x)| {
                let mut spec = Map::new();
                if let Some(containers) = containers {
                    spec.insert("containers".into(), Value::Array(containers));
                }
                if let Some(order) = order {
                    spec.insert(
                        "$setElementOrder/containers".into(),
                        Value::Array(order.into_iter().map(|n| json!({"name": n})).collect()),
                    );
                }
                if let Some(x) = x {
                    spec.insert("x".into(), x);
                }
                json!({
                    "metadata": {
                        "labels": object(labels),
                        "finalizers": add,
                        "$deleteFromPrimitiveList/finalizers": remove,
                    },
                    "spec": spec,
                })
            })
    }

    fn container_names(doc: &Value) -> Vec<String> {
        doc["spec"]["containers"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn merge_patch_with_an_empty_object_is_identity(doc in map_doc(scalar().boxed())) {
            let mut out = doc.clone();
            merge_patch(&mut out, &json!({}));
            prop_assert_eq!(out, doc);
        }

        #[test]
        fn merge_patch_is_idempotent(doc in plain_json(), patch in plain_json()) {
            let mut once = doc;
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn merge_patch_leaves_read_back_as_the_patch_values(
            doc in map_doc(scalar().boxed()),
            patch in map_doc(non_null_scalar().boxed()),
        ) {
            let mut out = doc;
            merge_patch(&mut out, &patch);
            let mut found = Vec::new();
            leaves(&patch, &mut Vec::new(), &mut found);
            for (path, value) in found {
                let got = at(&out, &path);
                if value == json!({}) {
                    prop_assert!(got.is_some_and(Value::is_object));
                } else {
                    prop_assert_eq!(got, Some(&value));
                }
            }
        }

        #[test]
        fn json_patch_add_then_remove_restores_the_original(
            doc in map_doc(scalar().boxed()),
            pick in any::<prop::sample::Index>(),
            at_index in any::<prop::sample::Index>(),
            value in plain_json(),
        ) {
            // Pick a container in the document, then a fresh slot in it.
            let mut containers: Vec<(Vec<String>, &Value)> = Vec::new();
            fn walk<'a>(v: &'a Value, p: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a Value)>) {
                match v {
                    Value::Object(m) => {
                        out.push((p.clone(), v));
                        for (k, c) in m {
                            p.push(k.replace('~', "~0").replace('/', "~1"));
                            walk(c, p, out);
                            p.pop();
                        }
                    }
                    Value::Array(items) => {
                        out.push((p.clone(), v));
                        for (i, c) in items.iter().enumerate() {
                            p.push(i.to_string());
                            walk(c, p, out);
                            p.pop();
                        }
                    }
                    _ => {}
                }
            }
            walk(&doc, &mut Vec::new(), &mut containers);
            let (parent, container) = pick.get(&containers);
            let slot = match container {
                Value::Array(items) => at_index.index(items.len() + 1).to_string(),
                _ => "fresh~1key".to_string(),
            };
            let pointer: String = parent.iter().chain(std::iter::once(&slot)).map(|t| format!("/{t}")).collect();
            let out = jp(doc.clone(), json!([
                {"op": "add", "path": pointer, "value": value},
                {"op": "remove", "path": pointer},
            ])).unwrap();
            prop_assert_eq!(out, doc);
        }

        #[test]
        fn json_patch_test_of_a_just_replaced_value_succeeds(
            doc in map_doc(scalar().boxed()),
            pick in any::<prop::sample::Index>(),
            value in plain_json(),
        ) {
            let mut found = Vec::new();
            leaves(&doc, &mut Vec::new(), &mut found);
            let (path, _) = pick.get(&found);
            let pointer: String = path.iter().map(|t| format!("/{t}")).collect();
            let out = jp(doc, json!([
                {"op": "replace", "path": pointer, "value": value},
                {"op": "test", "path": pointer, "value": value},
            ]));
            prop_assert!(out.is_ok());
        }

        #[test]
        fn json_patch_failing_operation_leaves_the_target_unchanged(
            doc in plain_json(),
            ops in json_patch_doc(),
        ) {
            let mut ops = match ops { Value::Array(ops) => ops, other => vec![other] };
            ops.push(json!({"op": "test", "path": "", "value": {"never": "equal", "n": [1, 2, 3]}}));
            let mut target = doc.clone();
            prop_assert!(json_patch(&mut target, &Value::Array(ops)).is_err());
            prop_assert_eq!(target, doc);
        }

        #[test]
        fn strategic_equals_merge_patch_on_maps_and_scalars(
            doc in map_doc(scalar().boxed()),
            patch in map_doc(scalar().boxed()),
            kind in prop_oneof![Just("Pod"), Just("Deployment"), Just("ConfigMap")],
        ) {
            let mut expected = doc.clone();
            merge_patch(&mut expected, &patch);
            let mut out = doc;
            strategic_merge_patch(&mut out, &patch, kind).unwrap();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn strategic_keyed_merge_never_duplicates_and_keeps_undeleted_items(
            target in prop::collection::btree_map("[a-e]", prop::option::of("[xyz]"), 0..5),
            patch in prop::collection::vec(("[a-f]", any::<bool>(), "[xyz]"), 0..5),
        ) {
            let doc = json!({"spec": {"containers": container_list(target.clone().into_iter().collect())}});
            let items: Vec<Value> = patch.iter().map(|(name, delete, image)| {
                if *delete { json!({"$patch": "delete", "name": name}) } else { json!({"name": name, "image": image}) }
            }).collect();
            let out = smp(doc, json!({"spec": {"containers": items}}), "Pod");
            let names = container_names(&out);
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), names.len());
            for name in target.keys() {
                let deleted = patch.iter().any(|(n, d, _)| *d && n == name);
                if !deleted {
                    prop_assert!(names.contains(name));
                }
            }
            for (name, delete, _) in &patch {
                if !delete {
                    prop_assert!(names.contains(name));
                }
            }
        }

        #[test]
        fn strategic_patch_is_idempotent(doc in pod_doc(), patch in pod_patch()) {
            // A patch that both deletes and re-adds one key moves that item to the end each time.
            let items = patch["spec"]["containers"].as_array().cloned().unwrap_or_default();
            let deleted: Vec<&Value> = items.iter().filter(|i| i.get("$patch").is_some()).map(|i| &i["name"]).collect();
            prop_assume!(!items.iter().any(|i| i.get("$patch").is_none() && deleted.contains(&&i["name"])));
            let mut once = doc;
            strategic_merge_patch(&mut once, &patch, "Pod").unwrap();
            prop_assert!(!has_directive(&once));
            let mut twice = once.clone();
            strategic_merge_patch(&mut twice, &patch, "Pod").unwrap();
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn three_way_on_maps_sets_modified_and_drops_removed_leaves(
            original in map_doc(non_null_scalar().boxed()),
            modified in map_doc(non_null_scalar().boxed()),
            current in map_doc(scalar().boxed()),
        ) {
            let patch = three_way_merge_patch(Some(&original), &modified, &current, "ConfigMap").unwrap();
            let mut applied = current;
            strategic_merge_patch(&mut applied, &patch, "ConfigMap").unwrap();
            let mut wanted = Vec::new();
            leaves(&modified, &mut Vec::new(), &mut wanted);
            for (path, value) in &wanted {
                let got = at(&applied, path);
                if *value == json!({}) {
                    prop_assert!(got.is_some_and(Value::is_object));
                } else {
                    prop_assert_eq!(got, Some(value));
                }
            }
            let mut had = Vec::new();
            leaves(&original, &mut Vec::new(), &mut had);
            for (path, _) in had {
                if at(&modified, &path).is_none() && !wanted.iter().any(|(p, _)| path.starts_with(p)) {
                    prop_assert!(at(&applied, &path).is_none(), "{:?} survived", path);
                }
            }
            let again = three_way_merge_patch(Some(&original), &modified, &applied, "ConfigMap").unwrap();
            prop_assert_eq!(again, json!({}));
        }

        #[test]
        fn three_way_on_pods_converges_in_one_apply(
            original in prop::option::of(pod_doc()),
            modified in pod_doc(),
            current in pod_doc(),
        ) {
            let patch = three_way_merge_patch(original.as_ref(), &modified, &current, "Pod").unwrap();
            let mut applied = current;
            strategic_merge_patch(&mut applied, &patch, "Pod").unwrap();
            for container in modified["spec"]["containers"].as_array().unwrap() {
                let name = &container["name"];
                let got = applied["spec"]["containers"].as_array().unwrap().iter().find(|c| &c["name"] == name);
                prop_assert!(got.is_some());
                if let Some(image) = container.get("image") {
                    prop_assert_eq!(got.and_then(|c| c.get("image")), Some(image));
                }
            }
            let names = container_names(&applied);
            let wanted = container_names(&modified);
            prop_assert!(names.starts_with(&wanted), "{:?} vs {:?}", names, wanted);
            if let Some(original) = &original {
                for name in container_names(original) {
                    if !wanted.contains(&name) {
                        prop_assert!(!names.contains(&name));
                    }
                }
                for f in original["metadata"]["finalizers"].as_array().unwrap() {
                    if !modified["metadata"]["finalizers"].as_array().unwrap().contains(f) {
                        prop_assert!(!applied["metadata"]["finalizers"].as_array().unwrap().contains(f));
                    }
                }
            }
            for f in modified["metadata"]["finalizers"].as_array().unwrap() {
                prop_assert!(applied["metadata"]["finalizers"].as_array().unwrap().contains(f));
            }
            let again = three_way_merge_patch(Some(&modified), &modified, &applied, "Pod").unwrap();
            prop_assert_eq!(&again, &json!({}));
            let again = three_way_merge_patch(original.as_ref(), &modified, &applied, "Pod").unwrap();
            prop_assert_eq!(again, json!({}));
        }

        #[test]
        fn nothing_panics_on_arbitrary_input(
            target in plain_json(),
            patch in any_json(key().boxed()),
            other in any_json(key().boxed()),
            ops in json_patch_doc(),
            kind in prop_oneof![Just("Pod"), Just("Deployment"), Just("ConfigMap")],
        ) {
            let mut doc = target.clone();
            merge_patch(&mut doc, &patch);
            let mut doc = target.clone();
            let _ = json_patch(&mut doc, &ops);
            let mut doc = target.clone();
            if strategic_merge_patch(&mut doc, &patch, kind).is_ok() {
                prop_assert!(!has_directive(&doc));
            } else {
                prop_assert_eq!(&doc, &target);
            }
            let _ = three_way_merge_patch(Some(&other), &patch, &target, kind);
            let _ = three_way_merge_patch(None, &target, &other, kind);
            if let Ok(patch) = three_way_merge_patch(Some(&other), &target, &patch, kind) {
                prop_assert!(patch.is_object());
            }
        }
    }
}
