//! Naming what a verb acts on: resource types, `TYPE NAME` and `TYPE/NAME` arguments, and
//! the URL paths and printed references (`deployment.apps/web`) that follow from them.

use anyhow::bail;
use serde_json::Value;

use crate::api::resources::{RESOURCES, ResourceInfo, resolve};

/// Resolves a type as a user types it (`po`, `deployments.apps`, `Pod`).
///
/// # Errors
/// When the server has no such type, in kubectl's words.
pub fn resource(name: &str) -> anyhow::Result<&'static ResourceInfo> {
    resolve(name)
        .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type \"{name}\""))
}

/// Resolves a comma-separated list of types; `all` expands to the types in the `all` category.
///
/// # Errors
/// When one of them is unknown.
pub fn resources(list: &str) -> anyhow::Result<Vec<&'static ResourceInfo>> {
    let mut out: Vec<&'static ResourceInfo> = Vec::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        let found: Vec<&'static ResourceInfo> = if name == "all" {
            RESOURCES
                .iter()
                .filter(|r| r.categories.contains(&"all"))
                .collect()
        } else {
            vec![resource(name)?]
        };
        for r in found {
            if !out.iter().any(|o| std::ptr::eq(*o, r)) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The resource type of a manifest, from its `apiVersion` and `kind`.
///
/// # Errors
/// When the server serves no such kind, in kubectl's words.
pub fn for_object(object: &Value, source: &str) -> anyhow::Result<&'static ResourceInfo> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES.iter().find(|r| r.kind == kind && r.group == group && r.version == version).ok_or_else(|| {
        anyhow::anyhow!(
            "resource mapping not found for name: \"{}\" namespace: \"{}\" from \"{source}\": no matches for kind \"{kind}\" in version \"{api_version}\"\nensure CRDs are installed first",
            object["metadata"]["name"].as_str().unwrap_or_default(),
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
        )
    })
}

pub use crate::api::resources::{collection_path, object_path};

/// The namespace a namespaced type uses, `None` for cluster-scoped ones.
pub fn scope<'a>(res: &ResourceInfo, namespace: &'a str) -> Option<&'a str> {
    res.namespaced.then_some(namespace)
}

/// The type as kubectl prints it before a name: `pod`, `deployment.apps`.
pub fn kind_ref(res: &ResourceInfo) -> String {
    if res.group.is_empty() {
        res.singular.to_owned()
    } else {
        format!("{}.{}", res.singular, res.group)
    }
}

/// `deployment.apps/web`.
pub fn object_ref(res: &ResourceInfo, name: &str) -> String {
    format!("{}/{name}", kind_ref(res))
}

/// Appends query parameters, URL-encoding their values; empty values are left out.
pub fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}{}", query.join("&"))
    }
}

/// The objects named on a command line: a type with names (empty for "all of them").
#[derive(Debug)]
pub struct Selection {
    /// The resource type.
    pub res: &'static ResourceInfo,
    /// The names; empty when only the type was given.
    pub names: Vec<String>,
}

/// Parses `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`, grouping names by type in order.
///
/// # Errors
/// On unknown types, or when the two forms are mixed.
pub fn selections(args: &[String]) -> anyhow::Result<Vec<Selection>> {
    let Some(first) = args.first() else {
        bail!(
            "you must specify the type of resource to get. Use \"wk api-resources\" for a complete list of supported resources"
        );
    };
    if first.contains('/') {
        let mut out: Vec<Selection> = Vec::new();
        for arg in args {
            let Some((kind, name)) = arg.split_once('/') else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'wk get resource/<resource_name>' instead of 'wk get resource resource/<resource_name>'"
                );
            };
            if name.is_empty() {
                bail!("arguments in resource/name form must have a single resource and name");
            }
            let res = resource(kind)?;
            match out.iter_mut().find(|s| std::ptr::eq(s.res, res)) {
                Some(s) => s.names.push(name.to_owned()),
                None => out.push(Selection {
                    res,
                    names: vec![name.to_owned()],
                }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        bail!(
            "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'wk get resource/<resource_name>' instead of 'wk get resource {bad}')"
        );
    }
    let types = resources(first)?;
    if types.len() > 1 && !names.is_empty() {
        bail!("you must specify only one resource type when naming objects");
    }
    Ok(types
        .into_iter()
        .map(|res| Selection {
            res,
            names: names.clone(),
        })
        .collect())
}

/// Parses the leading `TYPE NAME` or `TYPE/NAME` of verbs that act on one named object, and
/// returns the rest of the arguments.
///
/// # Errors
/// When no object is named.
pub fn one_object(args: &[String]) -> anyhow::Result<(&'static ResourceInfo, String, Vec<String>)> {
    match args {
        [first, rest @ ..] if first.contains('/') => {
            let (kind, name) = first.split_once('/').unwrap_or_default();
            Ok((resource(kind)?, name.to_owned(), rest.to_vec()))
        }
        [kind, name, rest @ ..] => Ok((resource(kind)?, name.clone(), rest.to_vec())),
        _ => bail!("you must specify a resource type and a name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_references_follow_kubernetes_conventions() {
        let deploy = resource("deploy").unwrap();
        assert_eq!(
            object_path(deploy, Some("default"), "web"),
            "/apis/apps/v1/namespaces/default/deployments/web"
        );
        assert_eq!(object_ref(deploy, "web"), "deployment.apps/web");
        let node = resource("no").unwrap();
        assert_eq!(object_path(node, Some("default"), "n1"), "/api/v1/nodes/n1");
        assert_eq!(object_ref(node, "n1"), "node/n1");
        assert_eq!(
            with_query(
                "/api/v1/pods",
                &[("labelSelector", "app=web"), ("limit", "")]
            ),
            "/api/v1/pods?labelSelector=app%3Dweb"
        );
    }

    #[test]
    fn selections_accept_both_argument_forms() {
        let s = selections(&["pods".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!((s.len(), s[0].names.len()), (1, 2));
        let s = selections(&["po/a".into(), "deploy/b".into(), "pod/c".into()]).unwrap();
        assert_eq!(
            s.iter().map(|s| s.names.join(",")).collect::<Vec<_>>(),
            ["a,c", "b"]
        );
        assert_eq!(selections(&["pods,svc".into()]).unwrap().len(), 2);
        assert!(
            selections(&["widgets".into()])
                .unwrap_err()
                .to_string()
                .contains("doesn't have a resource type \"widgets\"")
        );
    }
}
