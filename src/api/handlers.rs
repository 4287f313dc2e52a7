//! The verbs: create, get, list, update, patch and delete, plus the subresources.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use http::{Method, StatusCode, header};
use serde_json::{Map, Value, json};

use super::admission;
use super::apply::{Updater, record_update};
use super::error::{ApiError, ApiResult};
use super::objects::{self, FieldValidation};
use super::resources::{self, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};
use super::{ApiState, Ctx, Target, bytes_response, json_response, patch, table, watch};
use crate::store::{self, Revision};

/// How often a PATCH is retried when it races another write.
const PATCH_RETRIES: usize = 8;

/// Routes one parsed request to its verb.
///
/// # Errors
/// Whatever the verb fails with, as a Status.
pub async fn handle(state: &Arc<ApiState>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let t = &ctx.target;
    if t.res.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(ApiError::no_route(
            "a namespaced object needs a namespace in its path",
        ));
    }
    match (&ctx.method, t.name.is_some(), t.sub.as_deref()) {
        (&Method::GET, false, None) if ctx.query.flag("watch") => watch::serve(state, &ctx).await,
        (&Method::GET, false, None) => list(state, &ctx).await,
        (&Method::GET, true, None | Some("status")) => get(state, &ctx).await,
        (&Method::GET, true, Some("scale")) => get_scale(state, &ctx).await,
        (&Method::GET, true, Some("log")) => pod_log(state, &ctx).await,
        (&Method::POST, false, None) => create(state, &ctx, &body).await,
        (&Method::POST, true, Some("binding")) => bind(state, &ctx, &body).await,
        (&Method::POST, true, Some("eviction")) => evict(state, &ctx, &body).await,
        (&Method::PUT, true, None | Some("status")) => update(state, &ctx, &body).await,
        (&Method::PUT, true, Some("scale")) => update_scale(state, &ctx, &body).await,
        (&Method::PATCH, true, None | Some("status") | Some("scale")) => {
            patch_object(state, &ctx, &body).await
        }
        (&Method::DELETE, true, None) => delete(state, &ctx, &body).await,
        (&Method::DELETE, false, None) => delete_collection(state, &ctx, &body).await,
        (m, _, sub) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {}{})",
            t.res.plural,
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
}

// ---- bodies ----

/// Reads a request body as a JSON object (JSON or YAML by content type).
///
/// # Errors
/// 415 for an unknown type; 400 for malformed JSON, YAML or protobuf, naming where.
pub fn decode_body(ctx: &Ctx, body: &[u8]) -> ApiResult<Value> {
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let value = match content_type.as_str() {
        "application/json"
        | ""
        | "*/*"
        | "application/strategic-merge-patch+json"
        | "application/merge-patch+json"
        | "application/json-patch+json" => parse_json(body)?,
        "application/yaml"
        | "application/apply-patch+yaml"
        | "application/x-yaml"
        | "text/yaml" => parse_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid protobuf: {e}"))
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(
                other,
                &["application/json", "application/yaml"],
            ));
        }
    };
    Ok(value)
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn parse_yaml(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    yaml_serde::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
}

fn object_body(ctx: &Ctx, body: &[u8]) -> ApiResult<Value> {
    let v = decode_body(ctx, body)?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            type_name(&v)
        )));
    }
    Ok(v)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that a body's apiVersion and kind, when present, are the resource's.
fn check_type_meta(res: &ResourceInfo, v: &Value) -> ApiResult<()> {
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
        && av != res.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    if let Some(kind) = v.get("kind").and_then(Value::as_str)
        && kind != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub(super) fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn rv_of(v: &Value) -> Option<Revision> {
    meta_str(v, "resourceVersion").and_then(|s| s.parse().ok())
}

fn now() -> String {
    crate::clock::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn set_type_meta(res: &ResourceInfo, v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(res.api_version()));
        m.insert("kind".into(), json!(res.kind));
        // apiVersion and kind first, as the real server writes them.
        let mut ordered = Map::new();
        for k in ["apiVersion", "kind"] {
            if let Some(x) = m.remove(k) {
                ordered.insert(k.into(), x);
            }
        }
        ordered.append(m);
        *m = ordered;
    }
}

/// Puts the path's namespace into the body, refusing a different one.
fn set_namespace(t: &Target, v: &mut Value) -> ApiResult<()> {
    if !t.res.namespaced {
        meta_mut(v).remove("namespace");
        return Ok(());
    }
    let ns = t.namespace.clone().ok_or_else(|| {
        ApiError::bad_request("a namespaced object needs a namespace in its path")
    })?;
    match meta_str(v, "namespace") {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta_mut(v).insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

fn generate_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

// ---- shared write paths ----

/// The API error for a failed store write of the object `name`.
/// Adds `finalizer` to an object's finalizers unless it is there.
fn add_finalizer(object: &mut Value, finalizer: &str) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

fn write_error(res: &ResourceInfo, name: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::Conflict { .. } => ApiError::conflict(res, name),
        store::Error::NotFound(_) => ApiError::not_found(res, name),
        store::Error::AlreadyExists(_) => ApiError::already_exists(res, name),
        other => other.into(),
    }
}

impl ApiState {
    /// Creates an object that has been decoded and normalized: sets server fields, defaults,
    /// validates and stores it. Returns the stored object with its resourceVersion.
    ///
    /// # Errors
    /// 422 when invalid, 404 when the namespace is missing, 409 when the name is taken.
    pub async fn create_object(
        &self,
        res: &'static ResourceInfo,
        mut object: Value,
        updater: Option<&Updater>,
        dry_run: bool,
    ) -> ApiResult<Value> {
        set_type_meta(res, &mut object);
        let meta = meta_mut(&mut object);
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty()
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let generated = format!("{prefix}{}", generate_suffix());
            meta.insert("name".into(), json!(generated));
        }
        for server_set in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        if objects::has_generation(res) {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if res.has_status()
            && res.kind != "Node"
            && let Some(m) = object.as_object_mut()
        {
            m.remove("status");
        }
        objects::apply_defaults(res, &mut object, true);
        if res.kind == "PersistentVolume" {
            add_finalizer(&mut object, crate::controllers::volume::PV_PROTECTION);
        }
        let ns = meta_str(&object, "namespace").map(str::to_owned);
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        if let Some(ns) = &ns {
            self.check_namespace_open(ns).await?;
            if res.kind == "Pod" {
                self.admit_limits(ns, &name, &mut object)?;
                self.admit_runtime_class(&mut object)?;
            }
            if res.kind == "PersistentVolumeClaim" {
                self.admit_claim(&mut object)?;
            }
            // DefaultIngressClass admission: an Ingress that names no class gets the default.
            if res.kind == "Ingress"
                && object["spec"]["ingressClassName"].is_null()
                && object
                    .pointer("/metadata/annotations/kubernetes.io~1ingress.class")
                    .is_none()
                && let Some(class) = self.default_class(
                    "IngressClass",
                    "/metadata/annotations/ingressclass.kubernetes.io~1is-default-class",
                )
            {
                object["spec"]["ingressClassName"] = class;
            }
        }
        objects::validate(res, &object)?;
        if let Some(who) = updater {
            record_update(None, &mut object, res.kind, who);
        }
        // Held until the Service is stored, so that no other create takes its address.
        let _services = if res.kind == "Service" {
            Some(self.admit_service(res, &mut object, None).await?)
        } else {
            None
        };
        // Held until the object is stored, so that no other create counts usage meanwhile.
        let _quota = match &ns {
            Some(ns) => self.admit_quota(res, ns, &name, &object).await?,
            None => None,
        };
        if dry_run {
            return Ok(object);
        }
        let key = res.key(ns.as_deref(), &name);
        let bytes = Bytes::from(serde_json::to_vec(&object).map_err(ApiError::internal)?);
        match self.cache.store().create(&key, bytes).await {
            Ok(rev) => {
                meta_mut(&mut object).insert("resourceVersion".into(), json!(rev.to_string()));
                Ok(object)
            }
            Err(e) => Err(write_error(res, &name, e)),
        }
    }

    /// The objects of kind `kind` in namespace `ns`, from the cache.
    fn in_namespace(&self, kind: &str, ns: &str) -> Vec<Arc<Value>> {
        resources::by_kind(kind).map_or_else(Vec::new, |res| {
            self.cache
                .list(&res.prefix(Some(ns)), None, None, |_| true)
                .0
                .into_iter()
                .map(|(_, o)| o)
                .collect()
        })
    }

    /// LimitRange admission for a new pod: fills its containers' missing requests and limits
    /// from the namespace's LimitRanges, then checks their bounds.
    fn admit_limits(&self, ns: &str, name: &str, pod: &mut Value) -> ApiResult<()> {
        let ranges = self.in_namespace("LimitRange", ns);
        if ranges.is_empty() {
            return Ok(());
        }
        let ranges: Vec<&Value> = ranges.iter().map(AsRef::as_ref).collect();
        if admission::apply_limit_defaults(pod, &ranges) {
            let qos = objects::qos_class(&pod["spec"]);
            pod["status"]["qosClass"] = json!(qos);
        }
        admission::check_limit_ranges(pod, &ranges)
            .map_err(|e| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {e}")))
    }

    /// The name of the class of `kind` (StorageClass, IngressClass) whose annotation at
    /// `pointer` says it is the default.
    fn default_class(&self, kind: &str, pointer: &str) -> Option<Value> {
        let classes = resources::by_kind(kind)?;
        self.cache
            .list(&classes.prefix(None), None, None, |c| {
                c.pointer(pointer) == Some(&json!("true"))
            })
            .0
            .into_iter()
            .map(|(_, c)| c["metadata"]["name"].clone())
            .next()
    }

    /// RuntimeClass admission: a pod naming a class that does not exist is refused, and one
    /// naming a class with a node selector gets it merged into its own, so the scheduler puts
    /// it on a node with that runtime.
    fn admit_runtime_class(&self, pod: &mut Value) -> ApiResult<()> {
        let Some(class) = pod["spec"]["runtimeClassName"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let classes = resources::by_kind("RuntimeClass").expect("runtime classes are served");
        let found = self.cache.get(&classes.key(None, &class)).ok_or_else(|| {
            ApiError::forbidden(format!("pod rejected: RuntimeClass \"{class}\" not found"))
        })?;
        let Some(wanted) = found["scheduling"]["nodeSelector"].as_object() else {
            return Ok(());
        };
        let selector = &mut pod["spec"]["nodeSelector"];
        if !selector.is_object() {
            *selector = json!({});
        }
        for (k, v) in wanted {
            match selector.get(k) {
                Some(have) if have != v => {
                    return Err(ApiError::forbidden(format!(
                        "pod rejected: conflict in nodeSelector: RuntimeClass \"{class}\" needs {k}={v}, the pod has {k}={have}"
                    )));
                }
                _ => selector[k] = v.clone(),
            }
        }
        Ok(())
    }

    /// A new claim that names no storage class gets the default one (DefaultStorageClass
    /// admission), and the `kubernetes.io/pvc-protection` finalizer that keeps it while a pod
    /// uses it.
    fn admit_claim(&self, claim: &mut Value) -> ApiResult<()> {
        if claim["spec"]["storageClassName"].is_null()
            && let Some(class) = self.default_class(
                "StorageClass",
                "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
            )
        {
            claim["spec"]["storageClassName"] = class;
        }
        add_finalizer(claim, crate::controllers::volume::PVC_PROTECTION);
        // LimitRange items of type PersistentVolumeClaim bound the storage asked for.
        let ns = meta_str(claim, "namespace").unwrap_or_default().to_owned();
        let ranges = self.in_namespace("LimitRange", &ns);
        let ranges: Vec<&Value> = ranges.iter().map(AsRef::as_ref).collect();
        admission::check_claim_limits(claim, &ranges).map_err(|e| {
            ApiError::forbidden(format!(
                "persistentvolumeclaims \"{}\" is forbidden: {e}",
                meta_str(claim, "name").unwrap_or_default()
            ))
        })
    }

    /// ResourceQuota admission: checks `object` against every quota of its namespace, counting
    /// usage from the cache. Returns the quota lock, to hold until the object is stored, when
    /// the namespace has quotas.
    async fn admit_quota(
        &self,
        res: &'static ResourceInfo,
        ns: &str,
        name: &str,
        object: &Value,
    ) -> ApiResult<Option<tokio::sync::MutexGuard<'_, ()>>> {
        if self.in_namespace("ResourceQuota", ns).is_empty() {
            return Ok(None);
        }
        let guard = self.quota_lock.lock().await;
        self.cache.sync().await?;
        for quota in self.in_namespace("ResourceQuota", ns) {
            if quota.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let used = admission::quota_used(&quota, |r| self.in_namespace(r.kind, ns));
            admission::check_quota(&quota, &used, res, object).map_err(|e| {
                ApiError::forbidden(format!("{} \"{name}\" is forbidden: {e}", res.qualified()))
            })?;
        }
        Ok(Some(guard))
    }

    async fn check_namespace_open(&self, ns: &str) -> ApiResult<()> {
        let namespaces = resources::by_kind("Namespace").expect("namespaces are served");
        self.cache.sync().await?;
        match self.cache.get(&namespaces.key(None, ns)) {
            None => Err(ApiError::not_found(namespaces, ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Reads one object, consistently with every acknowledged write.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub async fn read(&self, t: &Target) -> ApiResult<Arc<Value>> {
        self.cache.sync().await?;
        self.cache
            .get(&t.key())
            .ok_or_else(|| ApiError::not_found(t.res, t.name.as_deref().unwrap_or_default()))
    }

    /// Writes `new` over `old` (both whole objects): keeps server-set fields, defaults,
    /// validates, bumps the generation on spec changes, and stores with `old`'s revision as
    /// precondition. A no-op update writes nothing.
    ///
    /// # Errors
    /// 422 when invalid; 409 when `old` is no longer current.
    pub async fn write_update(
        &self,
        res: &'static ResourceInfo,
        old: &Value,
        mut new: Value,
        updater: Option<&Updater>,
        dry_run: bool,
    ) -> ApiResult<Value> {
        set_type_meta(res, &mut new);
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let meta = meta_mut(&mut new);
            for kept in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "generation",
            ] {
                match old_meta.get(kept) {
                    Some(v) => meta.insert(kept.into(), v.clone()),
                    None => meta.remove(kept),
                };
            }
            meta.remove("resourceVersion");
            meta.remove("selfLink");
        }
        objects::apply_defaults(res, &mut new, false);
        // Held until the Service is stored, so that no other write takes its address.
        let _services = if res.kind == "Service" {
            Some(self.admit_service(res, &mut new, Some(old)).await?)
        } else {
            None
        };
        objects::validate(res, &new)?;
        objects::validate_update(res, old, &new)?;
        if objects::has_generation(res) && old.get("spec") != new.get("spec") {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        if let Some(who) = updater {
            record_update(Some(old), &mut new, res.kind, who);
        }
        let old_rv = rv_of(old);
        let mut unchanged = old.clone();
        meta_mut(&mut unchanged).remove("resourceVersion");
        if unchanged == new {
            return Ok(old.clone());
        }
        let ns = meta_str(&new, "namespace").map(str::to_owned);
        let name = meta_str(&new, "name").unwrap_or_default().to_owned();
        // An object marked for deletion goes once its last finalizer does; a pod in its
        // grace period stays (its status updates included) until the kubelet deletes it
        // with grace 0.
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0;
        if dry_run {
            return Ok(new);
        }
        let key = res.key(ns.as_deref(), &name);
        if finalized {
            return match self.cache.store().delete(&key, old_rv).await {
                Ok(kv) => {
                    meta_mut(&mut new)
                        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                    Ok(new)
                }
                Err(e) => Err(write_error(res, &name, e)),
            };
        }
        let bytes = Bytes::from(serde_json::to_vec(&new).map_err(ApiError::internal)?);
        match self.cache.store().update(&key, bytes, old_rv).await {
            Ok(rev) => {
                meta_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
                Ok(new)
            }
            Err(e) => Err(write_error(res, &name, e)),
        }
    }

    /// Deletes an object the way the kind asks: namespaces terminate, objects with finalizers
    /// get a deletionTimestamp, pods bound to a node are deleted gracefully, the rest go now.
    ///
    /// # Errors
    /// 409 on a lost race; 404 when already gone.
    pub async fn delete_object(
        self: &Arc<Self>,
        res: &'static ResourceInfo,
        existing: &Value,
        grace: Option<i64>,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let name = meta_str(existing, "name").unwrap_or_default().to_owned();
        let ns = meta_str(existing, "namespace").map(str::to_owned);
        let has_finalizers = existing
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let pod_grace = (res.kind == "Pod"
            && existing
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty()))
        .then(|| {
            grace
                .or_else(|| {
                    existing
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
        })
        .filter(|g| *g > 0);
        let terminating = existing.pointer("/metadata/deletionTimestamp").is_some();
        if res.kind == "Namespace" || has_finalizers || pod_grace.is_some() {
            if terminating && res.kind != "Pod" {
                return Ok(existing.clone());
            }
            let mut marked = existing.clone();
            let meta = meta_mut(&mut marked);
            if !terminating {
                meta.insert("deletionTimestamp".into(), json!(now()));
            }
            meta.insert(
                "deletionGracePeriodSeconds".into(),
                json!(pod_grace.unwrap_or(0)),
            );
            if res.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            let stored = self.store_marked(res, existing, marked, dry_run).await?;
            if res.kind == "Namespace" && !dry_run {
                let _ = self.finalizer.send(name);
            }
            return Ok(stored);
        }
        if dry_run {
            return Ok(existing.clone());
        }
        let key = res.key(ns.as_deref(), &name);
        match self.cache.store().delete(&key, rv_of(existing)).await {
            Ok(kv) => {
                let mut gone = existing.clone();
                meta_mut(&mut gone)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                Ok(gone)
            }
            Err(e) => Err(write_error(res, &name, e)),
        }
    }

    /// Stores `marked` over `old` as it is, conditional on `old`'s version: for a deletion mark
    /// (deletion fields are otherwise kept from the old object) or a binding.
    async fn store_marked(
        &self,
        res: &'static ResourceInfo,
        old: &Value,
        mut marked: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        if dry_run {
            return Ok(marked);
        }
        let name = meta_str(old, "name").unwrap_or_default().to_owned();
        let key = res.key(meta_str(old, "namespace"), &name);
        meta_mut(&mut marked).remove("resourceVersion");
        let bytes = Bytes::from(serde_json::to_vec(&marked).map_err(ApiError::internal)?);
        match self.cache.store().update(&key, bytes, rv_of(old)).await {
            Ok(rev) => {
                meta_mut(&mut marked).insert("resourceVersion".into(), json!(rev.to_string()));
                Ok(marked)
            }
            Err(e) => Err(write_error(res, &name, e)),
        }
    }

    /// Deletes everything in a terminating namespace, then the namespace itself. Objects with
    /// finalizers hold it until their finalizers are removed.
    pub async fn finalize_namespace(self: &Arc<Self>, ns: &str) {
        let namespaces = resources::by_kind("Namespace").expect("namespaces are served");
        loop {
            if self.cache.sync().await.is_err() {
                return;
            }
            let mut remaining = 0;
            for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                let (items, _, _) = self.cache.list(&res.prefix(Some(ns)), None, None, |_| true);
                remaining += items.len();
                for (_, object) in items {
                    if object.pointer("/metadata/deletionTimestamp").is_some() && res.kind != "Pod"
                    {
                        continue;
                    }
                    if let Err(e) = self.delete_object(res, &object, Some(0), false).await
                        && e.code != 404
                        && e.code != 409
                    {
                        tracing::warn!(namespace = ns, error = %e, "namespace clean-up could not delete an object");
                    }
                }
            }
            if remaining == 0 {
                if let Some(n) = self.cache.get(&namespaces.key(None, ns))
                    && let Err(e) = self
                        .cache
                        .store()
                        .delete(&namespaces.key(None, ns), rv_of(&n))
                        .await
                {
                    tracing::debug!(namespace = ns, error = %e, "namespace removal raced; retrying");
                    continue;
                }
                return;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }
}

// ---- verbs ----

fn respond(ctx: &Ctx, code: StatusCode, object: &Value, warnings: &[String]) -> Response {
    if ctx.wants_table() {
        let rv = meta_str(object, "resourceVersion")
            .unwrap_or_default()
            .to_owned();
        let mut t = table::table(
            ctx.target.res.kind,
            &[object],
            &rv,
            None,
            crate::clock::now(),
        );
        table::include_objects(&mut t, &[object], ctx.query.get("includeObject"));
        return json_response(code, &t, warnings);
    }
    json_response(code, object, warnings)
}

async fn get(state: &Arc<ApiState>, ctx: &Ctx) -> ApiResult<Response> {
    let object = state.read(&ctx.target).await?;
    Ok(respond(ctx, StatusCode::OK, &object, &[]))
}

/// The parsed list and watch filters of a request.
pub struct Filters {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filters {
    /// Parses and checks the selectors of a request.
    ///
    /// # Errors
    /// 400 for a malformed selector or an unsupported field.
    pub fn parse(ctx: &Ctx) -> ApiResult<Self> {
        let labels = LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse fieldSelector: {e}")))?;
        fields
            .check_supported(&ctx.target.res.selectable_fields())
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        Ok(Self { labels, fields })
    }

    /// Whether an object passes both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        ) && self.fields.matches(object)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

async fn list(state: &Arc<ApiState>, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let filters = Filters::parse(ctx)?;
    let limit =
        match ctx.query.get("limit") {
            None | Some("") | Some("0") => None,
            Some(l) => Some(l.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("limit must be a number, not \"{l}\""))
            })?),
        };
    let after = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("the continue token is not valid"))?;
            Some(raw)
        }
    };
    state.cache.sync().await?;
    let prefix = t.res.prefix(t.namespace.as_deref());
    let (items, revision, more) = state.cache.list(
        &prefix,
        after.as_ref().map(|a| a.start.as_str()),
        limit,
        |o| filters.matches(o),
    );
    let continue_token = (more && !items.is_empty()).then(|| {
        use base64::Engine;
        let last = items.last().map(|(k, _)| k.clone()).unwrap_or_default();
        let token = serde_json::to_vec(&ContinueToken {
            rv: revision,
            start: last,
        })
        .unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    });
    let rv = revision.to_string();
    if ctx.wants_table() {
        let objects: Vec<&Value> = items.iter().map(|(_, o)| o.as_ref()).collect();
        let mut table = table::table(
            t.res.kind,
            &objects,
            &rv,
            continue_token.as_deref(),
            crate::clock::now(),
        );
        table::include_objects(&mut table, &objects, ctx.query.get("includeObject"));
        return Ok(json_response(StatusCode::OK, &table, &[]));
    }
    // Lists can be large: write the items straight into the body.
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(c) = &continue_token {
        metadata["continue"] = json!(c);
    }
    let mut out = Vec::with_capacity(64 + items.len() * 1024);
    out.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut out, &t.res.list_kind()).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut out, &t.res.api_version()).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut out, &metadata).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"items\":[");
    for (i, (_, object)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, object.as_ref()).map_err(ApiError::internal)?;
    }
    out.extend_from_slice(b"]}");
    Ok(bytes_response(StatusCode::OK, Bytes::from(out), &[]))
}

async fn create(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let input = object_body(ctx, body)?;
    check_type_meta(t.res, &input)?;
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let (mut object, unknown) = objects::normalize(t.res, &input, mode)?;
    set_namespace(t, &mut object)?;
    let warnings = warnings_for(mode, &unknown);
    let created = state
        .create_object(t.res, object, updater(ctx).as_ref(), ctx.query.dry_run()?)
        .await?;
    Ok(respond(ctx, StatusCode::CREATED, &created, &warnings))
}

/// Who makes this write, for managedFields: `fieldManager`, else the User-Agent's product name,
/// as the Kubernetes field manager does. Status writes are not tracked (they would churn
/// managedFields on every status report).
fn updater(ctx: &Ctx) -> Option<Updater> {
    let sub = ctx.target.sub.as_deref();
    if sub == Some("status") {
        return None;
    }
    let manager = match ctx.query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_owned(),
        None => ctx
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|p| !p.trim().is_empty())
            .unwrap_or("unknown")
            .chars()
            .take(128)
            .collect(),
    };
    Some(Updater {
        manager,
        subresource: sub.map(str::to_owned),
    })
}

/// The `Warning` header texts for unknown fields under `fieldValidation=Warn`.
pub(super) fn warnings_for(mode: FieldValidation, unknown: &[String]) -> Vec<String> {
    if mode == FieldValidation::Warn {
        unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect()
    } else {
        Vec::new()
    }
}

/// Combines the stored object with what a main-resource or status write may change.
fn merge_for_subresource(
    res: &'static ResourceInfo,
    sub: Option<&str>,
    old: &Value,
    mut new: Value,
) -> Value {
    match sub {
        Some("status") => {
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(json!({}));
            merged
        }
        _ if res.has_status() => {
            if let Some(m) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            new
        }
        _ => new,
    }
}

async fn update(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let input = object_body(ctx, body)?;
    check_type_meta(t.res, &input)?;
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let (mut object, unknown) = objects::normalize(t.res, &input, mode)?;
    set_namespace(t, &mut object)?;
    match meta_str(&object, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {
            meta_mut(&mut object).insert("name".into(), json!(name));
        }
    }
    let existing = state.read(t).await?;
    if let Some(rv) = meta_str(&object, "resourceVersion").filter(|s| !s.is_empty())
        && Some(rv) != meta_str(&existing, "resourceVersion")
    {
        return Err(ApiError::conflict(t.res, name));
    }
    let merged = merge_for_subresource(t.res, t.sub.as_deref(), &existing, object);
    let stored = state
        .write_update(
            t.res,
            &existing,
            merged,
            updater(ctx).as_ref(),
            ctx.query.dry_run()?,
        )
        .await?;
    Ok(respond(
        ctx,
        StatusCode::OK,
        &stored,
        &warnings_for(mode, &unknown),
    ))
}

/// Which patch format a PATCH body is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    #[allow(missing_docs)]
    Json,
    Merge,
    Strategic,
    Apply,
}

/// The patch format a PATCH's content type names.
///
/// # Errors
/// 415 for any other type.
pub fn patch_kind(ctx: &Ctx) -> ApiResult<PatchKind> {
    let ct = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
        other => Err(ApiError::unsupported_media_type(
            other,
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ],
        )),
    }
}

/// `base` patched by `body` in format `kind`, for an object of kind `res_kind`.
///
/// # Errors
/// 422 or 400 when the patch does not apply.
pub fn apply_patch(
    kind: PatchKind,
    res_kind: &str,
    base: &Value,
    body: &Value,
) -> ApiResult<Value> {
    let mut out = base.clone();
    let result = match kind {
        PatchKind::Json => patch::json_patch(&mut out, body),
        PatchKind::Merge => {
            if !body.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut out, body);
            Ok(())
        }
        PatchKind::Strategic => {
            if !body.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge_patch(&mut out, body, res_kind)
        }
        PatchKind::Apply => unreachable!("server-side apply has its own path"),
    };
    result.map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(out)
}

async fn patch_object(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let kind = patch_kind(ctx)?;
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let dry_run = ctx.query.dry_run()?;
    let patch_body = decode_body(ctx, body)?;
    if kind == PatchKind::Apply {
        return super::apply::server_side_apply(state, ctx, patch_body, mode, dry_run).await;
    }
    let mut last_conflict = None;
    for _ in 0..PATCH_RETRIES {
        let existing = state.read(t).await?;
        let (patched, unknown) = if t.sub.as_deref() == Some("scale") {
            let scale = scale_view(&existing);
            let patched_scale = apply_patch(kind, "Scale", &scale, &patch_body)?;
            (scaled(t.res, &existing, &patched_scale)?, Vec::new())
        } else {
            let patched = apply_patch(kind, t.res.kind, &existing, &patch_body)?;
            if let Some(rv) = patch_body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && Some(rv) != meta_str(&existing, "resourceVersion")
            {
                return Err(ApiError::conflict(t.res, name));
            }
            if meta_str(&patched, "name") != Some(name) {
                return Err(ApiError::bad_request(
                    "a patch may not change metadata.name",
                ));
            }
            let (normalized, unknown) = objects::normalize(t.res, &patched, mode)?;
            (
                merge_for_subresource(t.res, t.sub.as_deref(), &existing, normalized),
                unknown,
            )
        };
        match state
            .write_update(t.res, &existing, patched, updater(ctx).as_ref(), dry_run)
            .await
        {
            Ok(stored) => {
                let shown = if t.sub.as_deref() == Some("scale") {
                    scale_view(&stored)
                } else {
                    stored
                };
                return Ok(respond(
                    ctx,
                    StatusCode::OK,
                    &shown,
                    &warnings_for(mode, &unknown),
                ));
            }
            Err(e) if e.reason == "Conflict" => last_conflict = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_conflict.unwrap_or_else(|| ApiError::conflict(t.res, name)))
}

/// The DeleteOptions of a DELETE, from its body or query.
fn delete_options(ctx: &Ctx, body: &[u8]) -> ApiResult<(Option<i64>, Value)> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        object_body(ctx, body)?
    };
    if let Some(policy) = ctx.query.get("propagationPolicy")
        && opts.get("propagationPolicy").is_none()
    {
        opts["propagationPolicy"] = json!(policy);
    }
    let grace = opts
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            ctx.query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
        });
    Ok((grace, opts))
}

/// The object to delete with the finalizer its propagationPolicy asks for: `Foreground` holds
/// it until the garbage collector has deleted its dependents, `Orphan` until it has released
/// them. `Background` (the default) deletes it now and its dependents after.
fn with_propagation(existing: &Value, opts: &Value) -> ApiResult<Value> {
    let policy = match opts.get("propagationPolicy").and_then(Value::as_str) {
        None if opts.get("orphanDependents") == Some(&json!(true)) => "Orphan",
        None => "Background",
        Some(p) => p,
    };
    let finalizer = match policy {
        "Background" => return Ok(existing.clone()),
        "Foreground" => crate::controllers::gc::FOREGROUND,
        "Orphan" => crate::controllers::gc::ORPHAN,
        other => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""
            )));
        }
    };
    let mut object = existing.clone();
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(object);
    }
    let finalizers = meta_mut(&mut object)
        .entry("finalizers")
        .or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
    Ok(object)
}

async fn delete(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let (grace, opts) = delete_options(ctx, body)?;
    let dry_run = ctx.query.dry_run()?
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    let mut raced = 0;
    loop {
        let existing = state.read(t).await?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && Some(uid) != meta_str(&existing, "uid")
        {
            return Err(ApiError::conflict_because(
                t.res,
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&existing, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != meta_str(&existing, "resourceVersion")
        {
            return Err(ApiError::conflict(t.res, name));
        }
        let existing = with_propagation(&existing, &opts)?;
        match state.delete_object(t.res, &existing, grace, dry_run).await {
            // A write between the read and the mark (a controller's status update) moved the
            // object on: delete it as it is now, as Kubernetes' storage retries its guaranteed
            // update, instead of answering the client with a conflict it did not cause. The
            // preconditions above are checked again on each read.
            Err(e) if e.code == 409 && raced < DELETE_RETRIES => raced += 1,
            result => return Ok(respond(ctx, StatusCode::OK, &result?, &[])),
        }
    }
}

/// How often a delete is retried when a concurrent write moves the object on.
const DELETE_RETRIES: u32 = 16;

async fn delete_collection(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let filters = Filters::parse(ctx)?;
    let (grace, opts) = delete_options(ctx, body)?;
    let dry_run = ctx.query.dry_run()?;
    state.cache.sync().await?;
    let (items, revision, _) =
        state
            .cache
            .list(&t.res.prefix(t.namespace.as_deref()), None, None, |o| {
                filters.matches(o)
            });
    let mut deleted = Vec::new();
    for (_, object) in items {
        let object = with_propagation(&object, &opts)?;
        match state.delete_object(t.res, &object, grace, dry_run).await {
            Ok(d) => deleted.push(d),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": t.res.list_kind(), "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": revision.to_string()}, "items": deleted});
    Ok(json_response(StatusCode::OK, &list, &[]))
}

// ---- subresources ----

/// The autoscaling/v1 Scale view of a scalable object.
fn scale_view(object: &Value) -> Value {
    let meta = object.get("metadata").cloned().unwrap_or(json!({}));
    let selector = object
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Applies a (possibly patched) Scale back onto its object.
fn scaled(res: &ResourceInfo, object: &Value, scale: &Value) -> ApiResult<Value> {
    let replicas = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|r| *r >= 0 && *r <= i64::from(i32::MAX))
            .ok_or_else(|| {
                ApiError::invalid(
                    res,
                    meta_str(object, "name").unwrap_or_default(),
                    vec![super::error::Cause::invalid(
                        "spec.replicas",
                        v,
                        "must be greater than or equal to 0",
                    )],
                )
            })?,
    };
    let mut out = object.clone();
    out["spec"]["replicas"] = json!(replicas);
    Ok(out)
}

async fn get_scale(state: &Arc<ApiState>, ctx: &Ctx) -> ApiResult<Response> {
    let object = state.read(&ctx.target).await?;
    Ok(json_response(StatusCode::OK, &scale_view(&object), &[]))
}

async fn update_scale(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let scale = object_body(ctx, body)?;
    let existing = state.read(t).await?;
    if let Some(rv) = meta_str(&scale, "resourceVersion").filter(|s| !s.is_empty())
        && Some(rv) != meta_str(&existing, "resourceVersion")
    {
        return Err(ApiError::conflict(t.res, name));
    }
    let updated = scaled(t.res, &existing, &scale)?;
    let stored = state
        .write_update(
            t.res,
            &existing,
            updated,
            updater(ctx).as_ref(),
            ctx.query.dry_run()?,
        )
        .await?;
    Ok(json_response(StatusCode::OK, &scale_view(&stored), &[]))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

async fn bind(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let name = t.name.as_deref().unwrap_or_default();
    let binding = object_body(ctx, body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                t.res,
                name,
                vec![super::error::Cause::required("target.name")],
            )
        })?
        .to_owned();
    for attempt in 0..PATCH_RETRIES {
        // The first try reads the cache as it is: the write is conditional on the version
        // read, so a stale copy only costs a retry (with a consistent read) and a scheduler
        // binding many pods does not wait for the cache once per pod.
        // A cached copy that would refuse the binding is read again consistently first.
        let cached = if attempt == 0 {
            state.cache.get(&t.key()).filter(|p| {
                p.pointer("/metadata/deletionTimestamp").is_none()
                    && p.pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            })
        } else {
            None
        };
        let existing = match cached {
            Some(pod) => pod,
            None => state.read(t).await?,
        };
        if existing.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_because(
                t.res,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(current) = existing
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_because(
                t.res,
                name,
                format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        let mut bound = (*existing).clone();
        bound["spec"]["nodeName"] = json!(node);
        let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
        let conditions = bound["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(condition);
        bound["status"]["conditions"] = json!(conditions);
        // Stored as it is, as Kubernetes' binding storage does: only the node and the
        // condition changed, on an object that was valid, so there is nothing to default,
        // validate or compare.
        match state
            .store_marked(t.res, &existing, bound, ctx.query.dry_run()?)
            .await
        {
            Ok(_) => return Ok(json_response(StatusCode::CREATED, &success(201), &[])),
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(t.res, name))
}

async fn evict(state: &Arc<ApiState>, ctx: &Ctx, body: &[u8]) -> ApiResult<Response> {
    let t = &ctx.target;
    let eviction = object_body(ctx, body)?;
    let grace = eviction
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    let existing = state.read(t).await?;
    let dry_run = ctx.query.dry_run()?;
    // A pod already going, or not running, costs no budget.
    let running = existing.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
    if existing.pointer("/metadata/deletionTimestamp").is_none() && running {
        spend_disruption_budget(state, &existing, dry_run).await?;
    }
    state
        .delete_object(t.res, &existing, grace, dry_run)
        .await?;
    Ok(json_response(StatusCode::CREATED, &success(201), &[]))
}

/// Takes one disruption from the PodDisruptionBudget that covers `pod`, recording the pod
/// in its `disruptedPods`; refuses with 429, in Kubernetes' words, when none is allowed.
async fn spend_disruption_budget(
    state: &Arc<ApiState>,
    pod: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let pdbs = super::resources::by_kind("PodDisruptionBudget")
        .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not served"))?;
    let ns = meta_str(pod, "namespace").unwrap_or("default");
    let name = meta_str(pod, "name").unwrap_or_default().to_owned();
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    // A conflict means another eviction took a disruption at the same moment: read again.
    for _ in 0..5 {
        state.cache.sync().await?;
        let (covering, _, _) = state.cache.list(&pdbs.prefix(Some(ns)), None, None, |pdb| {
            crate::api::selector::LabelSelector::from_json(
                pdb.pointer("/spec/selector").unwrap_or(&Value::Null),
            )
            .is_ok_and(|s| !s.is_empty() && s.matches(labels))
        });
        let pdb = match covering.as_slice() {
            [] => return Ok(()),
            [(_, one)] => one.clone(),
            _ => {
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
        };
        let status = pdb.get("status").cloned().unwrap_or(json!({}));
        let observed = status["observedGeneration"].as_i64().unwrap_or(0);
        let generation = pdb
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        if observed < generation || allowed <= 0 {
            let pdb_name = meta_str(&pdb, "name").unwrap_or_default();
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            e.causes.push(super::error::Cause {
                reason: "DisruptionBudget",
                message: format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    status["desiredHealthy"].as_i64().unwrap_or(0),
                    status["currentHealthy"].as_i64().unwrap_or(0)
                ),
                field: String::new(),
            });
            e.retry_after = Some(10);
            return Err(e);
        }
        let mut spent = (*pdb).clone();
        spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
        spent["status"]["disruptedPods"][name.as_str()] = json!(now());
        match state.write_update(pdbs, &pdb, spent, None, dry_run).await {
            Ok(_) => return Ok(()),
            Err(e) if e.reason == "Conflict" => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(pdbs, "eviction"))
}

/// A node's agent endpoint: `host:port` of its InternalIP and kubelet port.
pub(super) fn agent_address(node: &Value) -> Option<String> {
    let address = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    Some(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

/// A client for a node's agent endpoint, authenticated with the node token. The agent's
/// certificate is self-signed, so it is not verified; the agent checks the token.
pub(super) fn agent_client(state: &ApiState, node: &Value) -> Option<crate::client::Client> {
    crate::client::Client::new(
        &format!("https://{}", agent_address(node)?),
        Some(state.tokens.node.clone()),
        None,
    )
    .ok()
}

/// The container of `pod` a log or exec request names (`container=`), or its only one.
///
/// # Errors
/// 400 when the name is not one of the pod's, or when the pod has several and none is named.
pub(super) fn pick_container(pod: &Value, requested: Option<&str>) -> ApiResult<String> {
    let name = meta_str(pod, "name").unwrap_or_default();
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if names.len() == 1 => Ok(names[0].to_owned()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}

/// The Node a pod is bound to.
///
/// # Errors
/// 400 when the pod is not bound yet; 503 when its node is not registered.
pub(super) fn node_of(state: &ApiState, pod: &Value, container: &str) -> ApiResult<Arc<Value>> {
    let ns = meta_str(pod, "namespace").unwrap_or("default");
    let name = meta_str(pod, "name").unwrap_or_default();
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled to a node yet"
        )));
    }
    let nodes = resources::by_kind("Node").expect("nodes are served");
    state.cache.get(&nodes.key(None, node_name)).ok_or_else(|| {
        ApiError::unavailable(format!(
            "node {node_name} of pod {ns}/{name} is not registered"
        ))
    })
}

async fn pod_log(state: &Arc<ApiState>, ctx: &Ctx) -> ApiResult<Response> {
    let t = &ctx.target;
    let pod = state.read(t).await?;
    let ns = t.namespace.as_deref().unwrap_or("default");
    let name = t.name.as_deref().unwrap_or_default();
    let container = pick_container(&pod, ctx.query.get("container"))?;
    let node = node_of(state, &pod, &container)?;
    let node_name = meta_str(&node, "name").unwrap_or_default();
    let client = agent_client(state, &node).ok_or_else(|| {
        ApiError::unavailable(format!(
            "node {node_name} of pod {ns}/{name} has no reachable agent"
        ))
    })?;
    let mut query: Vec<(String, String)> = Vec::new();
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "limitBytes",
    ] {
        if let Some(v) = ctx.query.get(key) {
            query.push((key.to_owned(), v.to_owned()));
        }
    }
    let qs: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{qs}");
    let response = client
        .send(Method::GET, &path, None, Some("text/plain"), None)
        .await
        .map_err(|e| ApiError::unavailable(format!("reading logs from node {node_name}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        use http_body_util::BodyExt;
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(if status == StatusCode::NOT_FOUND {
            ApiError::new(404, "NotFound", text)
        } else {
            ApiError::bad_request(text)
        });
    }
    let mut r = Response::new(axum::body::Body::new(response.into_body()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(r)
}
