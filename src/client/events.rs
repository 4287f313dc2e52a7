//! Posting Events, as client-go's event recorder does: best effort, off the caller's path.

use http::Method;
use serde_json::{Value, json};

use super::Client;

/// Who reports an Event: a component (`kubelet`, `default-scheduler`...) and, for node-local
/// reporters, the node.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The reporting component.
    pub component: &'a str,
    /// The node it runs on, if it is node-local.
    pub host: Option<&'a str>,
}

/// The `involvedObject` reference to `object`.
pub fn reference(object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut r = json!({"kind": object["kind"], "apiVersion": object["apiVersion"],
        "name": meta["name"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]});
    if let Some(ns) = meta["namespace"].as_str() {
        r["namespace"] = json!(ns);
    }
    r
}

/// Posts a Normal Event from a control-plane component about an object of type
/// `(apiVersion, kind)`, given because list items carry neither; in the background.
pub fn record_normal(
    client: &Client,
    object: &Value,
    kind: (&str, &str),
    component: &str,
    reason: &str,
    message: &str,
) {
    record_about(client, object, kind, component, false, reason, message);
}

/// Posts an Event, Normal or Warning, from a control-plane component about an object of type
/// `(apiVersion, kind)`; in the background.
pub fn record_about(
    client: &Client,
    object: &Value,
    (api_version, kind): (&str, &str),
    component: &str,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let mut involved = reference(object);
    involved["kind"] = json!(kind);
    involved["apiVersion"] = json!(api_version);
    let source = Source {
        component,
        host: None,
    };
    record(client, involved, source, warning, reason, message);
}

/// Posts an Event about `involved` (a [`reference`], perhaps with a fieldPath) in the
/// background; a failure is only logged.
pub fn record(
    client: &Client,
    involved: Value,
    source: Source<'_>,
    warning: bool,
    reason: &str,
    message: &str,
) {
    // Events about cluster-scoped objects (Nodes) live in `default`, as Kubernetes puts them.
    let ns = involved["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = involved["name"].as_str().unwrap_or_default().to_owned();
    let t = crate::agent::status::now();
    let suffix: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
    let mut event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{suffix:x}"), "namespace": ns},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": source.component},
        "reportingComponent": source.component,
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    });
    if let Some(host) = source.host {
        event["source"]["host"] = json!(host);
        event["reportingInstance"] = json!(host);
    }
    let (client, path, reason) = (
        client.clone(),
        format!("/api/v1/namespaces/{ns}/events"),
        reason.to_owned(),
    );
    tokio::spawn(async move {
        if let Err(err) = client
            .request(
                Method::POST,
                &path,
                Some("application/json"),
                Some(event.to_string().into_bytes()),
            )
            .await
        {
            tracing::debug!(object = %name, %reason, error = %err, "could not post an event");
        }
    });
}
