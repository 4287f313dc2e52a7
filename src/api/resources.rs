//! The resource types the API serves: names, scope, verbs and subresources, in one table.

/// The verbs of an ordinary read-write resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// The verbs of a status or scale subresource.
pub const SUB_VERBS: &[&str] = &["get", "patch", "update"];

/// A subresource of a resource, such as `pods/status`.
#[derive(Debug)]
pub struct Subresource {
    /// `status`, `scale`, `log`, ...
    pub name: &'static str,
    /// The group of the kind it answers with.
    pub group: &'static str,
    /// The version of that kind.
    pub version: &'static str,
    /// The kind it answers with.
    pub kind: &'static str,
    /// What can be done with it.
    pub verbs: &'static [&'static str],
}

/// One resource type served by the API.
#[derive(Debug)]
pub struct ResourceInfo {
    /// The API group; empty for core.
    pub group: &'static str,
    /// The version served.
    pub version: &'static str,
    /// The plural path segment, such as `deployments`.
    pub plural: &'static str,
    /// The singular name, the kind in lower case.
    pub singular: &'static str,
    /// The kind.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl accepts (`po`, `deploy`).
    pub short_names: &'static [&'static str],
    /// Categories, such as `all`.
    pub categories: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// Fields a fieldSelector may name, besides metadata.name and metadata.namespace.
    pub fields: &'static [&'static str],
}

impl ResourceInfo {
    /// `apps/v1`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name used in messages: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the resource has a status subresource, so the main resource ignores status.
    pub fn has_status(&'static self) -> bool {
        self.subresource("status").is_some()
    }

    /// The named subresource.
    pub fn subresource(&'static self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// The store key prefix for this resource, optionally within a namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/{group}/{}/{ns}/", self.plural),
            _ => format!("/{group}/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The List kind, such as `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Every field a fieldSelector on this resource may name.
    pub fn selectable_fields(&self) -> Vec<&'static str> {
        let mut f = vec!["metadata.name", "metadata.namespace"];
        f.extend_from_slice(self.fields);
        f
    }
}

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        group,
        version,
        kind,
        verbs: SUB_VERBS,
    }
}

const fn scale() -> Subresource {
    Subresource {
        name: "scale",
        group: "autoscaling",
        version: "v1",
        kind: "Scale",
        verbs: SUB_VERBS,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

/// Every resource served, core first; discovery lists them in this order.
pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: ALL,
        subresources: &[
            status("", "v1", "Pod"),
            Subresource {
                name: "binding",
                group: "",
                version: "v1",
                kind: "Binding",
                verbs: &["create"],
            },
            Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: &["create"],
            },
            Subresource {
                name: "log",
                group: "",
                version: "v1",
                kind: "Pod",
                verbs: &["get"],
            },
        ],
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: NONE,
        subresources: &[status("", "v1", "Namespace")],
        fields: &["status.phase"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        categories: NONE,
        subresources: &[status("", "v1", "Node")],
        fields: &["spec.unschedulable"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: ALL,
        subresources: &[status("", "v1", "Service")],
        fields: &["spec.clusterIP", "spec.type"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        categories: NONE,
        subresources: &[],
        fields: &["type"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        kind: "PersistentVolumeClaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: NONE,
        subresources: &[status("", "v1", "PersistentVolumeClaim")],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        kind: "PersistentVolume",
        namespaced: false,
        short_names: &["pv"],
        categories: NONE,
        subresources: &[status("", "v1", "PersistentVolume")],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "resourcequotas",
        singular: "resourcequota",
        kind: "ResourceQuota",
        namespaced: true,
        short_names: &["quota"],
        categories: NONE,
        subresources: &[status("", "v1", "ResourceQuota")],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "limitranges",
        singular: "limitrange",
        kind: "LimitRange",
        namespaced: true,
        short_names: &["limits"],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: NONE,
        subresources: &[],
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: ALL,
        subresources: &[scale(), status("apps", "v1", "Deployment")],
        fields: &[],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        categories: ALL,
        subresources: &[scale(), status("apps", "v1", "ReplicaSet")],
        fields: &["status.replicas"],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        categories: ALL,
        subresources: &[status("apps", "v1", "DaemonSet")],
        fields: &[],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        short_names: &["sts"],
        categories: ALL,
        subresources: &[scale(), status("apps", "v1", "StatefulSet")],
        fields: &[],
    },
    ResourceInfo {
        group: "autoscaling",
        version: "v2",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        kind: "HorizontalPodAutoscaler",
        namespaced: true,
        short_names: &["hpa"],
        categories: ALL,
        subresources: &[status("autoscaling", "v2", "HorizontalPodAutoscaler")],
        fields: &[],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        namespaced: true,
        short_names: &[],
        categories: ALL,
        subresources: &[status("batch", "v1", "Job")],
        fields: &["status.successful"],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        namespaced: true,
        short_names: &["cj"],
        categories: ALL,
        subresources: &[status("batch", "v1", "CronJob")],
        fields: &[],
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingresses",
        singular: "ingress",
        kind: "Ingress",
        namespaced: true,
        short_names: &["ing"],
        categories: NONE,
        subresources: &[status("networking.k8s.io", "v1", "Ingress")],
        fields: &[],
    },
    ResourceInfo {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingressclasses",
        singular: "ingressclass",
        kind: "IngressClass",
        namespaced: false,
        short_names: &[],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "node.k8s.io",
        version: "v1",
        plural: "runtimeclasses",
        singular: "runtimeclass",
        kind: "RuntimeClass",
        namespaced: false,
        short_names: &[],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
    ResourceInfo {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
        categories: NONE,
        subresources: &[status("policy", "v1", "PodDisruptionBudget")],
        fields: &[],
    },
    ResourceInfo {
        group: "storage.k8s.io",
        version: "v1",
        plural: "storageclasses",
        singular: "storageclass",
        kind: "StorageClass",
        namespaced: false,
        short_names: &["sc"],
        categories: NONE,
        subresources: &[],
        fields: &[],
    },
];

/// The API groups served besides core, in discovery order.
pub const GROUPS: &[&str] = &[
    "apps",
    "autoscaling",
    "batch",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "storage.k8s.io",
];

/// The one version served of an API group (`v1` for core).
pub fn version_of(group: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version)
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn group_path(res: &ResourceInfo) -> String {
    if res.group.is_empty() {
        format!("/api/{}", res.version)
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    }
}

/// The collection URL path; `namespace` is ignored for cluster-scoped types and `None` means
/// every namespace.
pub fn collection_path(res: &ResourceInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if res.namespaced => format!("{}/namespaces/{ns}/{}", group_path(res), res.plural),
        _ => format!("{}/{}", group_path(res), res.plural),
    }
}

/// One object's URL path.
pub fn object_path(res: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(res, namespace))
}

/// Finds a resource by group and plural name.
pub fn lookup(group: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// Finds a resource by kind.
pub fn by_kind(kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// Finds a resource by any name a user may type: plural, singular, short name, `kind`, or
/// `plural.group` (case-insensitive, as kubectl resolves them).
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_owned(), Some(g.to_owned())),
        None => (lower.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        let named = r.plural == base
            || r.singular == base
            || r.short_names.contains(&base.as_str())
            || r.kind.eq_ignore_ascii_case(&base);
        named
            && group
                .as_deref()
                .is_none_or(|g| g == r.group || g == format!("{}.{}", r.version, r.group))
    })
}
