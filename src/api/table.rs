//! Server-side Tables: the columns kubectl prints for each kind.
//!
//! A port of kube-apiserver 1.32's `pkg/printers/internalversion/printers.go` for the kinds
//! this server serves, working on objects in their JSON (v1) shape. The server side always
//! prints the wide form (priority-1 columns included); kubectl hides them unless `-o wide`.
//! Where the real server would have defaulted a missing field before printing (Deployment,
//! ReplicaSet and StatefulSet `spec.replicas` = 1, Service `spec.type` = ClusterIP, port
//! `protocol` = TCP, CronJob `spec.suspend` = false, Secret `type` = Opaque), that default is used.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::selector::LabelSelector;

// ---------------------------------------------------------------------------------------------
// Column definitions
// ---------------------------------------------------------------------------------------------

struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i64,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const D_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const D_CREATED: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const D_CONTAINERS: &str = "Names of each container in the template.";
const D_IMAGES: &str = "Images referenced by each container in the template.";
const D_READY_PODS: &str = "Number of the pod with ready state";

const NAME: Col = Col {
    name: "Name",
    ty: "string",
    format: "name",
    description: D_NAME,
    priority: 0,
};
const AGE: Col = col("Age", "string", D_CREATED);
const CONTAINERS: Col = wide("Containers", "string", D_CONTAINERS);
const IMAGES: Col = wide("Images", "string", D_IMAGES);

const POD: &[Col] = &[
    NAME,
    col(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    wide(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
    ),
    wide(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
    ),
    wide(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates",
    ),
];

const DEPLOYMENT: &[Col] = &[
    NAME,
    col("Ready", "string", D_READY_PODS),
    col(
        "Up-to-date",
        "string",
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    col(
        "Available",
        "string",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
    ),
];

const REPLICA_SET: &[Col] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently oberved number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the replica count. If the selector is empty, it is defaulted to the labels present on the pod template. Label keys and values that must match in order to be controlled by this replica set. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

const DAEMON_SET: &[Col] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
    ),
    col(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
    ),
    col(
        "Ready",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
    ),
    col(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    col(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
    ),
    col(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "A label query over pods that are managed by the daemon set. Must match in order to be controlled. If empty, defaulted to labels on Pod template. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

const STATEFUL_SET: &[Col] = &[
    NAME,
    col("Ready", "string", D_READY_PODS),
    AGE,
    CONTAINERS,
    IMAGES,
];

const JOB_SELECTOR: Col = wide(
    "Selector",
    "string",
    "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
);

const JOB: &[Col] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    JOB_SELECTOR,
];

const CRON_JOB: &[Col] = &[
    NAME,
    col(
        "Schedule",
        "string",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
    ),
    col(
        "Timezone",
        "string",
        "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
    ),
    col(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
    ),
    col(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
    ),
    col(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    JOB_SELECTOR,
];

const SERVICE: &[Col] = &[
    NAME,
    col(
        "Type",
        "string",
        "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types",
    ),
    col(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    col(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/",
    ),
];

const D_NODE_ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

const NODE: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", D_NODE_ADDRESSES),
    wide("External-IP", "string", D_NODE_ADDRESSES),
    wide(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

const NAMESPACE: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

const CONFIG_MAP: &[Col] = &[
    NAME,
    col(
        "Data",
        "string",
        "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
    ),
    AGE,
];

const SECRET: &[Col] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
    ),
    col(
        "Data",
        "string",
        "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
    ),
    AGE,
];

const SERVICE_ACCOUNT: &[Col] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret",
    ),
    AGE,
];

const ENDPOINTS: &[Col] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
    ),
    AGE,
];

const ENDPOINT_SLICE: &[Col] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

const PVC: &[Col] = &[
    NAME,
    col("Status", "string", "The phase of the claim."),
    col("Volume", "string", "The volume bound to the claim."),
    col("Capacity", "string", "The capacity of the bound volume."),
    col(
        "Access Modes",
        "string",
        "The access modes of the bound volume.",
    ),
    col("StorageClass", "string", "The storage class of the claim."),
    col(
        "VolumeAttributesClass",
        "string",
        "The volume attributes class of the claim.",
    ),
    AGE,
];

const PV: &[Col] = &[
    NAME,
    col("Capacity", "string", "The capacity of the volume."),
    col("Access Modes", "string", "The access modes of the volume."),
    col(
        "Reclaim Policy",
        "string",
        "What happens to the volume when its claim is released.",
    ),
    col("Status", "string", "The phase of the volume."),
    col("Claim", "string", "The claim bound to the volume."),
    col("StorageClass", "string", "The storage class of the volume."),
    col(
        "VolumeAttributesClass",
        "string",
        "The volume attributes class of the volume.",
    ),
    col("Reason", "string", "Why the volume is in its phase."),
    AGE,
];

const STORAGE_CLASS: &[Col] = &[
    NAME,
    col("Provisioner", "string", "The provisioner of the class."),
    col(
        "ReclaimPolicy",
        "string",
        "What happens to provisioned volumes when released.",
    ),
    col(
        "VolumeBindingMode",
        "string",
        "When claims are bound and provisioned.",
    ),
    col("AllowVolumeExpansion", "string", "Whether claims may grow."),
    AGE,
];

const INGRESS: &[Col] = &[
    NAME,
    col(
        "Class",
        "string",
        "The IngressClass that serves the Ingress.",
    ),
    col("Hosts", "string", "The host names its rules match."),
    col("Address", "string", "The addresses it is served at."),
    col("Ports", "string", "The ports it is served on."),
    AGE,
];

const RUNTIME_CLASS: &[Col] = &[
    NAME,
    col(
        "Handler",
        "string",
        "The runtime that runs the class's pods.",
    ),
    AGE,
];

const INGRESS_CLASS: &[Col] = &[
    NAME,
    col(
        "Controller",
        "string",
        "The controller that serves Ingresses of this class.",
    ),
    col(
        "Parameters",
        "string",
        "The controller's parameters for this class.",
    ),
    AGE,
];

const HPA: &[Col] = &[
    NAME,
    col("Reference", "string", "The target of the autoscaler."),
    col(
        "Targets",
        "string",
        "The metrics' current values against their targets.",
    ),
    col(
        "MinPods",
        "string",
        "The fewest replicas the autoscaler sets.",
    ),
    col(
        "MaxPods",
        "integer",
        "The most replicas the autoscaler sets.",
    ),
    col("Replicas", "integer", "The target's current replicas."),
    AGE,
];

const RESOURCE_QUOTA: &[Col] = &[
    NAME,
    AGE,
    col(
        "Request",
        "string",
        "Usage against the hard limits on requests and object counts.",
    ),
    col(
        "Limit",
        "string",
        "Usage against the hard limits on limits.",
    ),
];

const PDB: &[Col] = &[
    NAME,
    col(
        "Min Available",
        "string",
        "Pods that must be available after an eviction.",
    ),
    col(
        "Max Unavailable",
        "string",
        "Pods that may be unavailable after an eviction.",
    ),
    col(
        "Allowed Disruptions",
        "integer",
        "Pod disruptions allowed now.",
    ),
    AGE,
];

const LEASE: &[Col] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
    ),
    AGE,
];

const EVENT: &[Col] = &[
    col(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", "string", "The object that this event is about."),
    wide(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
    ),
    wide(
        "Source",
        "string",
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    col(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    wide(
        "First Seen",
        "string",
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    wide(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        description: D_NAME,
        priority: 1,
    },
];

const DEFAULT: &[Col] = &[NAME, col("Created At", "date", D_CREATED)];

fn columns(kind: &str) -> &'static [Col] {
    match kind {
        "Pod" => POD,
        "Deployment" => DEPLOYMENT,
        "ReplicaSet" => REPLICA_SET,
        "DaemonSet" => DAEMON_SET,
        "StatefulSet" => STATEFUL_SET,
        "Job" => JOB,
        "CronJob" => CRON_JOB,
        "Service" => SERVICE,
        "Node" => NODE,
        "Namespace" => NAMESPACE,
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Endpoints" => ENDPOINTS,
        "EndpointSlice" => ENDPOINT_SLICE,
        "Lease" => LEASE,
        "PodDisruptionBudget" => PDB,
        "ResourceQuota" => RESOURCE_QUOTA,
        "HorizontalPodAutoscaler" => HPA,
        "PersistentVolumeClaim" => PVC,
        "PersistentVolume" => PV,
        "StorageClass" => STORAGE_CLASS,
        "Ingress" => INGRESS,
        "IngressClass" => INGRESS_CLASS,
        "RuntimeClass" => RUNTIME_CLASS,
        "Event" => EVENT,
        _ => DEFAULT,
    }
}

/// The `columnDefinitions` for a kind (e.g. `"Pod"`): a JSON array of
/// `{name, type, format, description, priority}`. Unknown kinds get `Name, Created At`.
pub fn column_definitions(kind: &str) -> Value {
    Value::Array(
        columns(kind)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.ty,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Rows and tables
// ---------------------------------------------------------------------------------------------

/// One table row for `obj`: `{"cells": [...], "object": PartialObjectMetadata}`, plus the
/// `Completed` row condition the real server adds for Succeeded and Failed pods. Ages are
/// computed against `now`.
pub fn row(kind: &str, obj: &Value, now: Timestamp) -> Value {
    let mut conditions = None;
    let cells = match kind {
        "Pod" => {
            let (cells, c) = pod_cells(obj, now);
            conditions = c;
            cells
        }
        "Deployment" => deployment_cells(obj, now),
        "ReplicaSet" => replica_set_cells(obj, now),
        "DaemonSet" => daemon_set_cells(obj, now),
        "StatefulSet" => stateful_set_cells(obj, now),
        "Job" => job_cells(obj, now),
        "CronJob" => cron_job_cells(obj, now),
        "Service" => service_cells(obj, now),
        "Node" => node_cells(obj, now),
        "Namespace" => vec![
            name(obj).into(),
            text(obj, &["status", "phase"]).into(),
            age(obj, now).into(),
        ],
        "ConfigMap" => vec![
            name(obj).into(),
            (map_len(obj, &["data"]) + map_len(obj, &["binaryData"])).into(),
            age(obj, now).into(),
        ],
        "Secret" => {
            let ty = match text(obj, &["type"]) {
                "" => "Opaque",
                t => t,
            };
            vec![
                name(obj).into(),
                ty.into(),
                map_len(obj, &["data"]).into(),
                age(obj, now).into(),
            ]
        }
        "ServiceAccount" => vec![
            name(obj).into(),
            count(list(obj, &["secrets"]).len()).into(),
            age(obj, now).into(),
        ],
        "Endpoints" => vec![
            name(obj).into(),
            format_endpoints(obj).into(),
            age(obj, now).into(),
        ],
        "EndpointSlice" => vec![
            name(obj).into(),
            text(obj, &["addressType"]).into(),
            slice_ports(obj).into(),
            slice_endpoints(obj).into(),
            age(obj, now).into(),
        ],
        "Ingress" => {
            let hosts: Vec<&str> = list(obj, &["spec", "rules"])
                .iter()
                .filter_map(|r| r["host"].as_str())
                .collect();
            let address: Vec<&str> = list(obj, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let tls = !list(obj, &["spec", "tls"]).is_empty();
            vec![
                name(obj).into(),
                match text(obj, &["spec", "ingressClassName"]) {
                    "" => "<none>",
                    class => class,
                }
                .into(),
                if hosts.is_empty() {
                    "*".to_owned()
                } else {
                    hosts.join(",")
                }
                .into(),
                address.join(",").into(),
                if tls { "80, 443" } else { "80" }.into(),
                age(obj, now).into(),
            ]
        }
        "RuntimeClass" => vec![
            name(obj).into(),
            text(obj, &["handler"]).into(),
            age(obj, now).into(),
        ],
        "IngressClass" => {
            let p = &obj["spec"]["parameters"];
            let parameters = match p["kind"].as_str() {
                Some(kind) => format!("{kind}/{}", p["name"].as_str().unwrap_or_default()),
                None => "<none>".to_owned(),
            };
            vec![
                name(obj).into(),
                text(obj, &["spec", "controller"]).into(),
                parameters.into(),
                age(obj, now).into(),
            ]
        }
        "Lease" => vec![
            name(obj).into(),
            text(obj, &["spec", "holderIdentity"]).into(),
            age(obj, now).into(),
        ],
        "PodDisruptionBudget" => {
            let either = |f: &str| match &obj["spec"][f] {
                Value::Null => "N/A".to_owned(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            vec![
                name(obj).into(),
                either("minAvailable").into(),
                either("maxUnavailable").into(),
                int_or(obj, &["status", "disruptionsAllowed"], 0).into(),
                age(obj, now).into(),
            ]
        }
        "Event" => event_cells(obj, now),
        "PersistentVolumeClaim" => vec![
            name(obj).into(),
            text(obj, &["status", "phase"]).into(),
            text(obj, &["spec", "volumeName"]).into(),
            text(obj, &["status", "capacity", "storage"]).into(),
            access_modes(&obj["status"]["accessModes"]).into(),
            text(obj, &["spec", "storageClassName"]).into(),
            "<unset>".into(),
            age(obj, now).into(),
        ],
        "PersistentVolume" => {
            let claim = &obj["spec"]["claimRef"];
            let claim = if claim.is_object() {
                format!(
                    "{}/{}",
                    claim["namespace"].as_str().unwrap_or_default(),
                    claim["name"].as_str().unwrap_or_default()
                )
            } else {
                String::new()
            };
            vec![
                name(obj).into(),
                text(obj, &["spec", "capacity", "storage"]).into(),
                access_modes(&obj["spec"]["accessModes"]).into(),
                text(obj, &["spec", "persistentVolumeReclaimPolicy"]).into(),
                text(obj, &["status", "phase"]).into(),
                claim.into(),
                text(obj, &["spec", "storageClassName"]).into(),
                "<unset>".into(),
                text(obj, &["status", "reason"]).into(),
                age(obj, now).into(),
            ]
        }
        "StorageClass" => {
            let default = obj["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                == "true";
            vec![
                if default {
                    format!("{} (default)", name(obj))
                } else {
                    name(obj).to_owned()
                }
                .into(),
                text(obj, &["provisioner"]).into(),
                text(obj, &["reclaimPolicy"]).into(),
                text(obj, &["volumeBindingMode"]).into(),
                (obj["allowVolumeExpansion"] == true).to_string().into(),
                age(obj, now).into(),
            ]
        }
        "HorizontalPodAutoscaler" => vec![
            name(obj).into(),
            format!(
                "{}/{}",
                text(obj, &["spec", "scaleTargetRef", "kind"]),
                text(obj, &["spec", "scaleTargetRef", "name"])
            )
            .into(),
            hpa_targets(obj).into(),
            int_or(obj, &["spec", "minReplicas"], 1).into(),
            int_or(obj, &["spec", "maxReplicas"], 0).into(),
            int_or(obj, &["status", "currentReplicas"], 0).into(),
            age(obj, now).into(),
        ],
        "ResourceQuota" => {
            // `pods: 1/10, requests.cpu: 500m/1`, limits apart, as kubectl prints them.
            let (mut request, mut limit) = (Vec::new(), Vec::new());
            for (k, hard) in obj["status"]["hard"].as_object().into_iter().flatten() {
                let used = obj["status"]["used"][k].as_str().unwrap_or("0");
                let cell = format!("{k}: {used}/{}", hard.as_str().unwrap_or_default());
                if k.starts_with("limits.") {
                    limit.push(cell);
                } else {
                    request.push(cell);
                }
            }
            vec![
                name(obj).into(),
                age(obj, now).into(),
                request.join(", ").into(),
                limit.join(", ").into(),
            ]
        }
        _ => {
            let created = time(obj, &["metadata", "creationTimestamp"])
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
            vec![name(obj).into(), created.into()]
        }
    };
    let mut row = Map::new();
    row.insert("cells".to_string(), Value::Array(cells));
    if let Some(c) = conditions {
        row.insert("conditions".to_string(), c);
    }
    row.insert("object".to_string(), partial_object_metadata(obj));
    Value::Object(row)
}

/// A whole `meta.k8s.io/v1` Table for a list (or a single object, or one watch event).
/// `resource_version` and `continue_token` go into the Table's list metadata when non-empty.
pub fn table(
    kind: &str,
    objs: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
    now: Timestamp,
) -> Value {
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert(
            "resourceVersion".to_string(),
            Value::String(resource_version.to_string()),
        );
    }
    if let Some(c) = continue_token.filter(|c| !c.is_empty()) {
        metadata.insert("continue".to_string(), Value::String(c.to_string()));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": objs.iter().map(|o| row(kind, o, now)).collect::<Vec<_>>(),
    })
}

/// Applies `includeObject`: `Object` puts each whole object in its row (kubectl's
/// `--sort-by` and `-o custom-columns` need it), `None` leaves rows without one, and the
/// default `Metadata` keeps the PartialObjectMetadata.
pub fn include_objects(table: &mut Value, objs: &[&Value], mode: Option<&str>) {
    let Some(rows) = table.get_mut("rows").and_then(Value::as_array_mut) else {
        return;
    };
    match mode {
        Some("Object") => {
            for (row, obj) in rows.iter_mut().zip(objs) {
                row["object"] = (*obj).clone();
            }
        }
        Some("None") => {
            for row in rows {
                row.as_object_mut().map(|m| m.remove("object"));
            }
        }
        _ => {}
    }
}

/// The row's `object`: the metadata (without managedFields) as a PartialObjectMetadata.
fn partial_object_metadata(obj: &Value) -> Value {
    let mut metadata = obj
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    metadata.remove("managedFields");
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
    })
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// Exactly `k8s.io/apimachinery/pkg/util/duration.HumanDuration`: `"0s"`–`"119s"`, then
/// `"2m"`/`"9m59s"` under 10 minutes, whole minutes under 3 hours (`"179m"`), `"3h5m"` under
/// 8 hours, whole hours under 2 days (`"47h"`), `"2d3h"` under 8 days, whole days under 2 years
/// (`"729d"`), `"2y45d"` under 8 years, then whole years.
pub fn human_duration(d: Duration) -> String {
    human_nanos(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// HumanDuration of a signed span in nanoseconds (negative spans beyond -1s are `<invalid>`).
fn human_nanos(nanos: i128) -> String {
    const SEC: i128 = 1_000_000_000;
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{h}h", hours / 24);
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{dy}d", hours / 24 / 365);
    }
    format!("{}y", hours / 24 / 365)
}

/// kube's `translateTimestampSince`: `<unknown>` for a missing time.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        None => "<unknown>".to_string(),
        Some(t) => human_nanos(now.duration_since(t).as_nanos()),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers (never panic, missing or mistyped fields read as zero values)
// ---------------------------------------------------------------------------------------------

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Access modes as kubectl abbreviates them: `RWO,ROX`.
fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An autoscaler's metrics as kubectl prints them: `cpu: 20%/50%`, `<unknown>` where no
/// value is known yet.
fn hpa_targets(obj: &Value) -> String {
    let current = obj["status"]["currentMetrics"].as_array();
    let specs = obj["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut shown: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = match m["type"].as_str() {
                Some("ContainerResource") => "containerResource",
                Some("Resource") => "resource",
                Some(other) => return format!("{other}: <unknown>"),
                None => return "<unknown>".into(),
            };
            let target = &m[field]["target"];
            let now = current.and_then(|c| c.get(i)).map(|c| &c[field]["current"]);
            let resource = m[field]["name"].as_str().unwrap_or_default();
            if target["type"] == "Utilization" {
                let value = now
                    .and_then(|c| c["averageUtilization"].as_i64())
                    .map_or_else(|| "<unknown>".to_owned(), |u| format!("{u}%"));
                format!(
                    "{resource}: {value}/{}%",
                    target["averageUtilization"].as_i64().unwrap_or(0)
                )
            } else {
                let value = now
                    .and_then(|c| c["averageValue"].as_str())
                    .unwrap_or("<unknown>");
                format!(
                    "{resource}: {value}/{}",
                    target["averageValue"].as_str().unwrap_or_default()
                )
            }
        })
        .collect();
    if shown.is_empty() {
        return "<none>".into();
    }
    if shown.len() > 2 {
        let more = shown.len() - 2;
        shown.truncate(2);
        shown.push(format!("+ {more} more..."));
    }
    shown.join(", ")
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

fn int_or(v: &Value, path: &[&str], default: i64) -> i64 {
    match get(v, path) {
        None => default,
        Some(x) => x
            .as_i64()
            .or_else(|| x.as_f64().map(|f| f as i64))
            .unwrap_or(0),
    }
}

fn int(v: &Value, path: &[&str]) -> i64 {
    int_or(v, path, 0)
}

fn flag(v: &Value, path: &[&str]) -> bool {
    get(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn object<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    get(v, path).and_then(Value::as_object)
}

fn map_len(v: &Value, path: &[&str]) -> i64 {
    object(v, path).map_or(0, |m| count(m.len()))
}

/// A length as a JSON integer.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An RFC 3339 time; `None` when missing, unparsable or Go's zero time.
fn time(v: &Value, path: &[&str]) -> Option<Timestamp> {
    let t: Timestamp = text(v, path).parse().ok()?;
    // 0001-01-01T00:00:00Z, which Go treats as "not set".
    (t.as_second() != -62_135_596_800 || t.subsec_nanosecond() != 0).then_some(t)
}

fn name(obj: &Value) -> &str {
    text(obj, &["metadata", "name"])
}

fn age(obj: &Value, now: Timestamp) -> String {
    since(time(obj, &["metadata", "creationTimestamp"]), now)
}

fn is_set(v: &Value, path: &[&str]) -> bool {
    get(v, path).is_some()
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".to_string()
    } else {
        pairs.join(",")
    }
}

/// `metav1.FormatLabelSelector`: `<error>` when invalid, `<none>` when it prints empty.
fn format_label_selector(sel: Option<&Value>) -> String {
    match LabelSelector::from_json(sel.unwrap_or(&Value::Null)) {
        Err(_) => "<error>".to_string(),
        Ok(s) => {
            let s = s.to_string();
            if s.is_empty() {
                "<none>".to_string()
            } else {
                s
            }
        }
    }
}

/// `layoutContainerCells`: comma-joined container names and images.
fn container_cells(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

// ---------------------------------------------------------------------------------------------
// Printers
// ---------------------------------------------------------------------------------------------

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn has_condition(conditions: &[Value], ty: &str, status: &str) -> bool {
    conditions
        .iter()
        .any(|c| text(c, &["type"]) == ty && text(c, &["status"]) == status)
}

/// kube's `printPod`.
fn pod_cells(pod: &Value, now: Timestamp) -> (Vec<Value>, Option<Value>) {
    let status = get(pod, &["status"]).unwrap_or(&Value::Null);
    let containers = list(pod, &["spec", "containers"]);
    let init_containers = list(pod, &["spec", "initContainers"]);
    let conditions = list(status, &["conditions"]);

    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total = count(containers.len());
    let mut ready: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_init_restart: Option<Timestamp> = None;

    let phase = text(status, &["phase"]);
    let mut reason = match text(status, &["reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    if conditions
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    let row_conditions = match phase {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]),
        ),
        _ => None,
    };

    let restartable: BTreeSet<&str> = init_containers
        .iter()
        .filter(|c| text(c, &["restartPolicy"]) == "Always")
        .map(|c| text(c, &["name"]))
        .collect();
    total += count(
        init_containers
            .iter()
            .filter(|c| text(c, &["restartPolicy"]) == "Always")
            .count(),
    );

    let mut initializing = false;
    for (i, c) in list(status, &["initContainerStatuses"]).iter().enumerate() {
        let rc = int(c, &["restartCount"]);
        restarts += rc;
        let finished = time(c, &["lastState", "terminated", "finishedAt"]);
        last_restart = later(last_restart, finished);
        let is_restartable = restartable.contains(text(c, &["name"]));
        if is_restartable {
            restartable_init_restarts += rc;
            last_restartable_init_restart = later(last_restartable_init_restart, finished);
        }
        let terminated = get(c, &["state", "terminated"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if is_restartable && flag(c, &["started"]) {
            if flag(c, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        let waiting_reason = text(c, &["state", "waiting", "reason"]);
        reason = if let Some(t) = terminated {
            match text(t, &["reason"]) {
                "" if int(t, &["signal"]) != 0 => format!("Init:Signal:{}", int(t, &["signal"])),
                "" => format!("Init:ExitCode:{}", int(t, &["exitCode"])),
                r => format!("Init:{r}"),
            }
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{}/{}", i, init_containers.len())
        };
        initializing = true;
        break;
    }

    if !initializing || has_condition(conditions, "Initialized", "True") {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for c in list(status, &["containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            last_restart = later(
                last_restart,
                time(c, &["lastState", "terminated", "finishedAt"]),
            );
            let waiting_reason = text(c, &["state", "waiting", "reason"]);
            let terminated = get(c, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match text(t, &["reason"]) {
                    "" if int(t, &["signal"]) != 0 => format!("Signal:{}", int(t, &["signal"])),
                    "" => format!("ExitCode:{}", int(t, &["exitCode"])),
                    r => r.to_string(),
                };
            } else if flag(c, &["ready"]) && is_set(c, &["state", "running"]) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(conditions, "Ready", "True") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if is_set(pod, &["metadata", "deletionTimestamp"]) {
        if text(status, &["reason"]) == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Failed" && phase != "Succeeded" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    let mut pod_ip = list(status, &["podIPs"])
        .first()
        .map(|p| text(p, &["ip"]))
        .unwrap_or("");
    if pod_ip.is_empty() {
        pod_ip = text(status, &["podIP"]);
    }
    let none_if_empty = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let gates = list(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = text(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| text(c, &["type"]) == ty)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{}/{}", true_count, gates.len())
    };

    let cells = vec![
        name(pod).into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_text.into(),
        age(pod, now).into(),
        none_if_empty(pod_ip).into(),
        none_if_empty(text(pod, &["spec", "nodeName"])).into(),
        none_if_empty(text(status, &["nominatedNodeName"])).into(),
        readiness_gates.into(),
    ];
    (cells, row_conditions)
}

fn deployment_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let desired = int_or(obj, &["spec", "replicas"], 1);
    let ready = int(obj, &["status", "readyReplicas"]);
    let (names, images) = container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    let selector =
        match LabelSelector::from_json(get(obj, &["spec", "selector"]).unwrap_or(&Value::Null)) {
            Ok(s) => s.to_string(),
            Err(_) => "<invalid>".to_string(),
        };
    vec![
        name(obj).into(),
        format!("{ready}/{desired}").into(),
        int(obj, &["status", "updatedReplicas"]).into(),
        int(obj, &["status", "availableReplicas"]).into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
        selector.into(),
    ]
}

fn replica_set_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    vec![
        name(obj).into(),
        int_or(obj, &["spec", "replicas"], 1).into(),
        int(obj, &["status", "replicas"]).into(),
        int(obj, &["status", "readyReplicas"]).into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
        format_label_selector(get(obj, &["spec", "selector"])).into(),
    ]
}

fn daemon_set_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    vec![
        name(obj).into(),
        int(obj, &["status", "desiredNumberScheduled"]).into(),
        int(obj, &["status", "currentNumberScheduled"]).into(),
        int(obj, &["status", "numberReady"]).into(),
        int(obj, &["status", "updatedNumberScheduled"]).into(),
        int(obj, &["status", "numberAvailable"]).into(),
        format_labels(object(obj, &["spec", "template", "spec", "nodeSelector"])).into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
        format_label_selector(get(obj, &["spec", "selector"])).into(),
    ]
}

fn stateful_set_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    vec![
        name(obj).into(),
        format!(
            "{}/{}",
            int(obj, &["status", "readyReplicas"]),
            int_or(obj, &["spec", "replicas"], 1)
        )
        .into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
    ]
}

/// kube's `hasJobCondition`: the first condition of that type decides.
fn job_condition(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .find(|c| text(c, &["type"]) == ty)
        .is_some_and(|c| text(c, &["status"]) == "True")
}

fn job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int(obj, &["status", "succeeded"]);
    let completions = match get(obj, &["spec", "completions"]) {
        Some(_) => format!("{succeeded}/{}", int(obj, &["spec", "completions"])),
        None => {
            let parallelism = int_or(obj, &["spec", "parallelism"], 1);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = time(obj, &["status", "startTime"]);
    let duration = match (start, time(obj, &["status", "completionTime"])) {
        (None, _) => String::new(),
        (Some(s), None) => since(Some(s), now),
        (Some(s), Some(c)) => human_nanos(c.duration_since(s).as_nanos()),
    };
    let conditions = list(obj, &["status", "conditions"]);
    let status = if job_condition(conditions, "Complete") {
        "Complete"
    } else if job_condition(conditions, "Failed") {
        "Failed"
    } else if is_set(obj, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else if job_condition(conditions, "Suspended") {
        "Suspended"
    } else if job_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = container_cells(list(obj, &["spec", "template", "spec", "containers"]));
    vec![
        name(obj).into(),
        status.into(),
        completions.into(),
        duration.into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
        format_label_selector(get(obj, &["spec", "selector"])).into(),
    ]
}

fn cron_job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let last_schedule = match time(obj, &["status", "lastScheduleTime"]) {
        Some(t) => since(Some(t), now),
        None if is_set(obj, &["status", "lastScheduleTime"]) => "<unknown>".to_string(),
        None => "<none>".to_string(),
    };
    let time_zone = match get(obj, &["spec", "timeZone"]).and_then(Value::as_str) {
        Some(tz) => tz.to_string(),
        None => "<none>".to_string(),
    };
    let suspend = if flag(obj, &["spec", "suspend"]) {
        "True"
    } else {
        "False"
    };
    let template = &[
        "spec",
        "jobTemplate",
        "spec",
        "template",
        "spec",
        "containers",
    ];
    let (names, images) = container_cells(list(obj, template));
    vec![
        name(obj).into(),
        text(obj, &["spec", "schedule"]).into(),
        time_zone.into(),
        suspend.into(),
        count(list(obj, &["status", "active"]).len()).into(),
        last_schedule.into(),
        age(obj, now).into(),
        names.into(),
        images.into(),
        format_label_selector(get(obj, &["spec", "jobTemplate", "spec", "selector"])).into(),
    ]
}

fn strings(v: &Value, path: &[&str]) -> Vec<String> {
    list(v, path)
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// kube's `getServiceExternalIP` in wide mode (no 16-character clipping).
fn service_external_ip(svc: &Value, ty: &str) -> String {
    let external_ips = strings(svc, &["spec", "externalIPs"]);
    match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb: BTreeSet<&str> = list(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .map(|i| match text(i, &["ip"]) {
                    "" => text(i, &["hostname"]),
                    ip => ip,
                })
                .filter(|s| !s.is_empty())
                .collect();
            let lb: Vec<&str> = lb.into_iter().collect();
            if !external_ips.is_empty() {
                let mut all: Vec<String> = lb.iter().map(|s| s.to_string()).collect();
                all.extend(external_ips);
                all.join(",")
            } else if !lb.is_empty() {
                lb.join(",")
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => text(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    let ty = match text(svc, &["spec", "type"]) {
        "" => "ClusterIP",
        t => t,
    };
    let cluster_ip = list(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| Some(text(svc, &["spec", "clusterIP"])).filter(|s| !s.is_empty()))
        .unwrap_or("<none>");
    let ports: Vec<String> = list(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let protocol = match text(p, &["protocol"]) {
                "" => "TCP",
                pr => pr,
            };
            let node_port = int(p, &["nodePort"]);
            if node_port > 0 {
                format!("{}:{}/{}", int(p, &["port"]), node_port, protocol)
            } else {
                format!("{}/{}", int(p, &["port"]), protocol)
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name(svc).into(),
        ty.into(),
        cluster_ip.into(),
        service_external_ip(svc, ty).into(),
        ports.into(),
        age(svc, now).into(),
        format_labels(object(svc, &["spec", "selector"])).into(),
    ]
}

fn node_address(node: &Value, ty: &str) -> String {
    list(node, &["status", "addresses"])
        .iter()
        .find(|a| text(a, &["type"]) == ty)
        .map(|a| text(a, &["address"]).to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // The last Ready condition wins, as with kube's condition map.
    let ready = list(node, &["status", "conditions"])
        .iter()
        .rfind(|c| text(c, &["type"]) == "Ready");
    let mut status = vec![match ready {
        Some(c) if text(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if flag(node, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    for (k, v) in object(node, &["metadata", "labels"]).into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role"
            && let Some(v) = v.as_str().filter(|v| !v.is_empty())
        {
            roles.insert(v.to_string());
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };
    let info = |field: &str| match text(node, &["status", "nodeInfo", field]) {
        "" => "<unknown>".to_string(),
        s => s.to_string(),
    };
    vec![
        name(node).into(),
        status.join(",").into(),
        roles.into(),
        age(node, now).into(),
        text(node, &["status", "nodeInfo", "kubeletVersion"]).into(),
        node_address(node, "InternalIP").into(),
        node_address(node, "ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

/// kube's `formatEndpoints` with all ports: at most three `ip:port`, then `+ N more...`.
fn format_endpoints(ep: &Value) -> String {
    let subsets = list(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut shown: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = list(ss, &["addresses"]);
        let ports = list(ss, &["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if shown.len() == MAX {
                    more = true;
                    break;
                }
                shown.push(text(a, &["ip"]).to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if shown.len() == MAX {
                    more = true;
                    break;
                }
                let ip = text(a, &["ip"]);
                let p = int(port, &["port"]);
                shown.push(if ip.contains(':') {
                    format!("[{ip}]:{p}")
                } else {
                    format!("{ip}:{p}")
                });
            }
        }
    }
    let joined = shown.join(",");
    if more {
        format!("{joined} + {} more...", count.saturating_sub(MAX))
    } else {
        joined
    }
}

/// At most three entries, then `+ N more...`, as kubectl's printers list them; `<unset>` when
/// there are none.
fn first_three(all: Vec<String>) -> String {
    const MAX: usize = 3;
    match all.len() {
        0 => "<unset>".to_owned(),
        n if n > MAX => format!("{} + {} more...", all[..MAX].join(","), n - MAX),
        _ => all.join(","),
    }
}

/// An EndpointSlice's port numbers.
fn slice_ports(slice: &Value) -> String {
    first_three(
        list(slice, &["ports"])
            .iter()
            .map(|p| match p["port"].as_i64() {
                Some(n) => n.to_string(),
                None => "<unset>".to_owned(),
            })
            .collect(),
    )
}

/// An EndpointSlice's addresses.
fn slice_endpoints(slice: &Value) -> String {
    first_three(
        list(slice, &["endpoints"])
            .iter()
            .flat_map(|e| list(e, &["addresses"]))
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
    )
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    let first_seen = match time(ev, &["firstTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => since(time(ev, &["eventTime"]), now),
    };
    let mut last_seen = match time(ev, &["lastTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut times = int(ev, &["count"]);
    if is_set(ev, &["series"]) {
        last_seen = since(time(ev, &["series", "lastObservedTime"]), now);
        times = int(ev, &["series", "count"]);
    } else if times == 0 {
        times = 1;
    }
    let kind = text(ev, &["involvedObject", "kind"]).to_lowercase();
    let target = match text(ev, &["involvedObject", "name"]) {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = first_non_empty(
        text(ev, &["source", "component"]),
        text(ev, &["reportingComponent"]),
    );
    let instance = first_non_empty(
        text(ev, &["source", "host"]),
        text(ev, &["reportingInstance"]),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last_seen.into(),
        text(ev, &["type"]).into(),
        text(ev, &["reason"]).into(),
        target.into(),
        text(ev, &["involvedObject", "fieldPath"]).into(),
        source.into(),
        text(ev, &["message"]).trim().into(),
        first_seen.into(),
        times.into(),
        name(ev).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// `now` minus the given number of seconds, as RFC 3339.
    fn ago(secs: i64) -> String {
        now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    }

    fn cells(kind: &str, obj: &Value) -> Vec<Value> {
        let r = row(kind, obj, now());
        let cells = r["cells"].as_array().unwrap().clone();
        assert_eq!(
            cells.len(),
            column_definitions(kind).as_array().unwrap().len(),
            "{kind}: one cell per column"
        );
        cells
    }

    fn running_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "default", "labels": {"app": "web"},
                "creationTimestamp": ago(3600 + 300),
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [{"name": "main", "image": "nginx"}, {"name": "side", "image": "busybox"}]
            },
            "status": {
                "phase": "Running",
                "podIP": "100.64.0.10",
                "podIPs": [{"ip": "100.64.0.10"}],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
                "containerStatuses": [
                    {"name": "main", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": ago(3600)}}},
                    {"name": "side", "ready": true, "restartCount": 1,
                     "state": {"running": {"startedAt": ago(300)}},
                     "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(300)}}}
                ]
            }
        })
    }

    #[test]
    fn running_pod_with_two_containers_and_a_restart() {
        let c = cells("Pod", &running_pod());
        assert_eq!(
            c,
            vec![
                json!("web-1"),
                json!("2/2"),
                json!("Running"),
                json!("1 (5m ago)"),
                json!("65m"),
                json!("100.64.0.10"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
    }

    #[test]
    fn row_object_is_partial_metadata_without_managed_fields() {
        let r = row("Pod", &running_pod(), now());
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(r["object"]["metadata"]["name"], "web-1");
        assert_eq!(r["object"]["metadata"]["labels"]["app"], "web");
        assert!(r["object"]["metadata"].get("managedFields").is_none());
        assert!(r.get("conditions").is_none());
    }

    #[test]
    fn terminating_pod_says_terminating() {
        let mut p = running_pod();
        p["metadata"]["deletionTimestamp"] = json!(ago(10));
        assert_eq!(cells("Pod", &p)[2], json!("Terminating"));
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(cells("Pod", &p)[2], json!("Unknown"));
    }

    #[test]
    fn waiting_and_terminated_containers_give_their_reason() {
        let p = json!({
            "metadata": {"name": "crash", "creationTimestamp": ago(30)},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}}
            ]}
        });
        let c = cells("Pod", &p);
        assert_eq!(c[1], json!("0/2"));
        // Statuses are walked backwards, so the first container's reason wins.
        assert_eq!(c[2], json!("CrashLoopBackOff"));
        assert_eq!(c[3], json!("4"), "no finishedAt, so no '(ago)'");
        assert_eq!(c[4], json!("30s"));
    }

    #[test]
    fn initializing_pods_show_init_progress() {
        let mut p = json!({
            "metadata": {"name": "init"},
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "m"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "state": {"running": {}}}
            ]}
        });
        let c = cells("Pod", &p);
        assert_eq!(c[2], json!("Init:1/2"));
        assert_eq!(c[4], json!("<unknown>"));
        p["status"]["initContainerStatuses"][1]["state"] =
            json!({"waiting": {"reason": "ErrImagePull"}});
        assert_eq!(cells("Pod", &p)[2], json!("Init:ErrImagePull"));
        p["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 2}});
        assert_eq!(cells("Pod", &p)[2], json!("Init:ExitCode:2"));
    }

    #[test]
    fn sidecar_init_containers_count_towards_ready() {
        let p = json!({
            "metadata": {"name": "sidecar"},
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "m"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 2, "state": {"running": {}}}],
                "containerStatuses": [{"name": "m", "ready": true, "state": {"running": {}}}]}
        });
        let c = cells("Pod", &p);
        assert_eq!(c[1], json!("2/2"));
        assert_eq!(c[2], json!("Running"));
        assert_eq!(c[3], json!("2"));
    }

    #[test]
    fn completed_pods_carry_a_completed_row_condition() {
        let p = json!({
            "metadata": {"name": "done"},
            "spec": {"containers": [{"name": "m"}], "readinessGates": [{"conditionType": "x/ok"}]},
            "status": {"phase": "Succeeded", "conditions": [{"type": "x/ok", "status": "True"}],
                "containerStatuses": [{"name": "m", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let r = row("Pod", &p, now());
        assert_eq!(r["cells"][2], "Completed");
        assert_eq!(r["cells"][8], "1/1");
        assert_eq!(r["conditions"][0]["type"], "Completed");
        assert_eq!(r["conditions"][0]["reason"], "Succeeded");
    }

    #[test]
    fn scheduling_gated_pod() {
        let p = json!({"metadata": {"name": "g"}, "spec": {"containers": [{"name": "m"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}});
        assert_eq!(cells("Pod", &p)[2], json!("SchedulingGated"));
    }

    #[test]
    fn node_port_service() {
        let s = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(86400 * 3)},
            "spec": {"type": "NodePort", "clusterIP": "100.65.0.12", "clusterIPs": ["100.65.0.12"],
                "selector": {"app": "web", "tier": "front"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
        });
        assert_eq!(
            cells("Service", &s),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("100.65.0.12"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("3d"),
                json!("app=web,tier=front"),
            ]
        );
    }

    #[test]
    fn other_service_types() {
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["100.64.0.1"], "ports": [{"port": 443}]}});
        let c = cells("Service", &lb);
        assert_eq!(c[3], json!("<pending>"));
        assert_eq!(c[4], json!("443/TCP"));
        assert_eq!(c[6], json!("<none>"));
        let mut lb2 = lb.clone();
        lb2["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "a.example.com"}]}});
        assert_eq!(cells("Service", &lb2)[3], json!("5.6.7.8,a.example.com"));
        lb2["spec"]["externalIPs"] = json!(["1.1.1.1"]);
        assert_eq!(
            cells("Service", &lb2)[3],
            json!("5.6.7.8,a.example.com,1.1.1.1")
        );
        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        let c = cells("Service", &headless);
        assert_eq!(c[1], json!("ClusterIP"));
        assert_eq!(c[2], json!("None"));
        assert_eq!(c[4], json!("<none>"));
        let ext = json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        let c = cells("Service", &ext);
        assert_eq!(c[2], json!("<none>"));
        assert_eq!(c[3], json!("db.example.com"));
    }

    #[test]
    fn cordoned_control_plane_node() {
        let n = json!({
            "metadata": {"name": "node-1", "creationTimestamp": ago(86400 * 40),
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": "", "kubernetes.io/hostname": "node-1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.2"}, {"type": "Hostname", "address": "node-1"}],
                "nodeInfo": {"kubeletVersion": "v1.32.4", "osImage": "Ubuntu 24.04 LTS", "kernelVersion": "6.8.0", "containerRuntimeVersion": "containerd://1.7.0"}
            }
        });
        assert_eq!(
            cells("Node", &n),
            vec![
                json!("node-1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,master"),
                json!("40d"),
                json!("v1.32.4"),
                json!("127.0.0.2"),
                json!("<none>"),
                json!("Ubuntu 24.04 LTS"),
                json!("6.8.0"),
                json!("containerd://1.7.0"),
            ]
        );
    }

    #[test]
    fn node_status_variants() {
        let not_ready = json!({"metadata": {"name": "n", "labels": {"kubernetes.io/role": "worker"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        let c = cells("Node", &not_ready);
        assert_eq!(c[1], json!("NotReady"));
        assert_eq!(c[2], json!("worker"));
        assert_eq!(c[7], json!("<unknown>"));
        let unknown = json!({"metadata": {"name": "n"}});
        let c = cells("Node", &unknown);
        assert_eq!(c[1], json!("Unknown"));
        assert_eq!(c[2], json!("<none>"));
    }

    #[test]
    fn deployment_row() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(7 * 3600 + 59 * 60)},
            "spec": {"replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}, {"name": "log", "image": "fluent"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            cells("Deployment", &d),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("7h59m"),
                json!("web,log"),
                json!("nginx:1.27,fluent"),
                json!("app=web"),
            ]
        );
        let fresh = json!({"metadata": {"name": "new"}, "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Bad"}]}}});
        let c = cells("Deployment", &fresh);
        assert_eq!(c[1], json!("0/1"));
        assert_eq!(c[7], json!("<invalid>"));
    }

    #[test]
    fn replica_set_daemon_set_and_stateful_set_rows() {
        let rs = json!({"metadata": {"name": "web-abc"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "abc"}},
            "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}, "status": {"replicas": 2, "readyReplicas": 1}});
        let c = cells("ReplicaSet", &rs);
        assert_eq!(&c[..4], &[json!("web-abc"), json!(2), json!(2), json!(1)]);
        assert_eq!(c[7], json!("app=web,pod-template-hash=abc"));
        let ds = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a", "image": "agent:1"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        let c = cells("DaemonSet", &ds);
        assert_eq!(
            &c[..7],
            &[
                json!("agent"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux")
            ]
        );
        assert_eq!(c[10], json!("app=agent"));
        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 1}});
        assert_eq!(cells("StatefulSet", &sts)[1], json!("1/3"));
        let no_selector = json!({"metadata": {"name": "x"}});
        assert_eq!(cells("ReplicaSet", &no_selector)[7], json!("<none>"));
    }

    #[test]
    fn job_and_cron_job_rows() {
        let job = json!({"metadata": {"name": "pi"}, "spec": {"completions": 3, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}}},
            "status": {"succeeded": 3, "startTime": ago(200), "completionTime": ago(50),
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let c = cells("Job", &job);
        assert_eq!(
            &c[..4],
            &[json!("pi"), json!("Complete"), json!("3/3"), json!("2m30s")]
        );
        let running = json!({"metadata": {"name": "r"}, "spec": {"parallelism": 2}, "status": {"startTime": ago(40)}});
        let c = cells("Job", &running);
        assert_eq!(
            &c[1..4],
            &[json!("Running"), json!("0/1 of 2"), json!("40s")]
        );
        let suspended = json!({"metadata": {"name": "s"}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        let c = cells("Job", &suspended);
        assert_eq!(&c[1..4], &[json!("Suspended"), json!("0/1"), json!("")]);
        let failed = json!({"metadata": {"name": "f"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(cells("Job", &failed)[1], json!("Failed"));

        let cj = json!({"metadata": {"name": "hello"}, "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "h", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "hello-1"}], "lastScheduleTime": ago(90)}});
        assert_eq!(
            cells("CronJob", &cj),
            vec![
                json!("hello"),
                json!("*/5 * * * *"),
                json!("Etc/UTC"),
                json!("False"),
                json!(1),
                json!("90s"),
                json!("<unknown>"),
                json!("h"),
                json!("busybox"),
                json!("<none>"),
            ]
        );
        let plain =
            json!({"metadata": {"name": "p"}, "spec": {"schedule": "@daily", "suspend": true}});
        let c = cells("CronJob", &plain);
        assert_eq!(
            &c[2..6],
            &[json!("<none>"), json!("True"), json!(0), json!("<none>")]
        );
    }

    #[test]
    fn small_kinds() {
        let ns = json!({"metadata": {"name": "default", "creationTimestamp": ago(100)}, "status": {"phase": "Active"}});
        assert_eq!(
            cells("Namespace", &ns),
            vec![json!("default"), json!("Active"), json!("100s")]
        );
        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cells("ConfigMap", &cm)[1], json!(3));
        let secret = json!({"metadata": {"name": "s"}, "data": {"k": "dg=="}});
        assert_eq!(
            &cells("Secret", &secret)[1..3],
            &[json!("Opaque"), json!(1)]
        );
        let sa = json!({"metadata": {"name": "default"}});
        assert_eq!(cells("ServiceAccount", &sa)[1], json!(0));
        let lease = json!({"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1"}});
        assert_eq!(cells("Lease", &lease)[1], json!("node-1"));
    }

    #[test]
    fn endpoints_are_listed_up_to_three() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{
            "addresses": [{"ip": "100.64.0.1"}, {"ip": "100.64.0.2"}, {"ip": "::1"}, {"ip": "100.64.0.4"}],
            "ports": [{"port": 80}]}]});
        assert_eq!(
            cells("Endpoints", &ep)[1],
            json!("100.64.0.1:80,100.64.0.2:80,[::1]:80 + 1 more...")
        );
        let none = json!({"metadata": {"name": "x"}});
        assert_eq!(cells("Endpoints", &none)[1], json!("<none>"));
        let headless =
            json!({"metadata": {"name": "x"}, "subsets": [{"addresses": [{"ip": "100.64.0.9"}]}]});
        assert_eq!(cells("Endpoints", &headless)[1], json!("100.64.0.9"));
    }

    #[test]
    fn event_row() {
        let ev = json!({
            "metadata": {"name": "web-1.17f", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{main}"},
            "reason": "Pulled", "message": "  Successfully pulled image \"nginx\"\n", "type": "Normal",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": ago(600), "lastTimestamp": ago(60), "count": 3
        });
        assert_eq!(
            cells("Event", &ev),
            vec![
                json!("60s"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web-1"),
                json!("spec.containers{main}"),
                json!("kubelet, node-1"),
                json!("Successfully pulled image \"nginx\""),
                json!("10m"),
                json!(3),
                json!("web-1.17f"),
            ]
        );
        let new_style = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Node"},
            "eventTime": "2025-06-01T11:59:00.123456Z", "reportingComponent": "scheduler"});
        let c = cells("Event", &new_style);
        assert_eq!(c[0], json!("59s"));
        assert_eq!(c[3], json!("node"));
        assert_eq!(c[5], json!("scheduler"));
        assert_eq!(c[7], json!("59s"));
        assert_eq!(c[8], json!(1));
        let series = json!({"metadata": {"name": "e"}, "series": {"count": 7, "lastObservedTime": "2025-06-01T11:58:00.000000Z"}});
        let c = cells("Event", &series);
        assert_eq!(c[0], json!("2m"));
        assert_eq!(c[8], json!(7));
    }

    #[test]
    fn other_kinds_get_name_and_created_at() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2024-01-02T03:04:05Z"}});
        assert_eq!(
            cells("Widget", &obj),
            vec![json!("x"), json!("2024-01-02T03:04:05Z")]
        );
        assert_eq!(
            cells("Widget", &json!({}))[1],
            json!("0001-01-01T00:00:00Z")
        );
        let defs = column_definitions("Widget");
        assert_eq!(defs[1]["name"], "Created At");
        assert_eq!(defs[1]["type"], "date");
    }

    #[test]
    fn column_definitions_have_every_field() {
        for kind in [
            "Pod",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "Service",
            "Node",
            "Namespace",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "Lease",
            "Event",
            "Other",
        ] {
            for c in column_definitions(kind).as_array().unwrap() {
                for field in ["name", "type", "format", "description", "priority"] {
                    assert!(c.get(field).is_some(), "{kind} column lacks {field}");
                }
            }
        }
        let pod = column_definitions("Pod");
        let names: Vec<&str> = pod
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(pod[0]["format"], "name");
        assert_eq!(pod[4]["priority"], 0);
        assert_eq!(pod[5]["priority"], 1);
    }

    #[test]
    fn rows_never_panic_on_odd_objects() {
        let odd = [
            json!({}),
            json!(null),
            json!("text"),
            json!({"metadata": 5, "spec": "x", "status": [1, 2]}),
            json!({"metadata": {"name": 7, "creationTimestamp": "yesterday", "labels": ["a"]},
                   "spec": {"containers": "no", "replicas": "three", "ports": [1, {"port": "x"}], "selector": 4},
                   "status": {"containerStatuses": [null, 3, {"state": 1}], "conditions": {"a": 1}, "addresses": [{}]},
                   "subsets": [{"addresses": [1], "ports": [{}]}], "series": 1}),
        ];
        for kind in [
            "Pod",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "Service",
            "Node",
            "Namespace",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "Lease",
            "Event",
            "Other",
        ] {
            for o in &odd {
                cells(kind, o);
            }
        }
    }

    #[test]
    fn table_shape() {
        let p = running_pod();
        let t = table("Pod", &[&p, &p], "110", Some("tok"), now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "110", "continue": "tok"})
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(t["rows"].as_array().unwrap().len(), 2);
        let t = table("Pod", &[], "", None, now());
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(t["rows"], json!([]));
    }

    #[test]
    fn human_duration_matches_go_at_every_boundary() {
        let s = |secs: u64| human_duration(Duration::from_secs(secs));
        const M: u64 = 60;
        const H: u64 = 3600;
        const D: u64 = 86400;
        const Y: u64 = 365 * D;
        let cases = [
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (60, "60s"),
            (119, "119s"),
            (2 * M, "2m"),
            (2 * M + 1, "2m1s"),
            (5 * M + 30, "5m30s"),
            (9 * M + 59, "9m59s"),
            (10 * M, "10m"),
            (10 * M + 59, "10m"),
            (45 * M, "45m"),
            (179 * M + 59, "179m"),
            (3 * H, "3h"),
            (3 * H + 5 * M, "3h5m"),
            (7 * H + 59 * M + 59, "7h59m"),
            (8 * H, "8h"),
            (47 * H + 59 * M, "47h"),
            (48 * H, "2d"),
            (2 * D + 3 * H, "2d3h"),
            (7 * D + 23 * H + 59 * M, "7d23h"),
            (8 * D, "8d"),
            (729 * D + 23 * H, "729d"),
            (2 * Y, "2y"),
            (2 * Y + 45 * D, "2y45d"),
            (7 * Y + 364 * D, "7y364d"),
            (8 * Y, "8y"),
            (8 * Y + 100 * D, "8y"),
            (300 * Y, "300y"),
        ];
        for (secs, want) in cases {
            assert_eq!(s(secs), want, "{secs}s");
        }
        assert_eq!(human_duration(Duration::from_millis(119_999)), "119s");
        assert_eq!(human_duration(Duration::MAX).chars().last(), Some('y'));
    }

    #[test]
    fn negative_spans_follow_go() {
        assert_eq!(human_nanos(-999_999_999), "0s");
        assert_eq!(human_nanos(-1_999_999_999), "0s");
        assert_eq!(human_nanos(-2_000_000_000), "<invalid>");
        let future =
            json!({"metadata": {"name": "f", "creationTimestamp": "2025-06-01T12:00:10Z"}});
        assert_eq!(cells("Namespace", &future)[2], json!("<invalid>"));
    }
}
