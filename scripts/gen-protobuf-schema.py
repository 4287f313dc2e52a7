#!/usr/bin/env python3
"""Writes src/api/protobuf.schema: the field numbers of the Kubernetes protobuf messages wk decodes.

kubectl 1.32 sends protobuf bodies for its generator commands (shared/kubectl-compat.md 3.1).
The schema comes from two crates.io packages that cargo fetches: k8s-pb (prost attributes give the
field numbers and wire types) and k8s-openapi (its serde code gives the JSON name of each field,
which prost's snake_case loses: `podCIDR`, `clusterIP`). Regenerate after bumping either crate:

    cargo fetch && python3 scripts/gen-protobuf-schema.py

Output lines:
    M <package>.<Message>
    F <tag> <jsonName> <kind> <repeated|optional|map> [<type>]
where kind is string, int32, int64, bool, bytes, double or message, and type names the message
(or, for a map, the value kind or message).
"""
import glob
import os
import re
import sys

REG = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
PB = sorted(p for r in REG for p in glob.glob(r + "k8s-pb-0.8.*"))[-1] + "/src/"
OPENAPI = sorted(p for r in REG for p in glob.glob(r + "k8s-openapi-0.29.*"))[-1] + "/src/v1_33/"

MODULES = [
    "api/core/v1", "api/apps/v1", "api/batch/v1", "api/coordination/v1", "api/policy/v1",
    "api/autoscaling/v1", "api/autoscaling/v2", "api/storage/v1", "api/networking/v1",
    "apimachinery/pkg/apis/meta/v1", "apimachinery/pkg/api/resource",
    "apimachinery/pkg/util/intstr", "apimachinery/pkg/runtime",
]

# snake_case -> JSON name, from k8s-openapi's deserializers: `"podCIDR" => Field::Key_pod_cidr,`
json_names = {}
for path in glob.glob(OPENAPI + "**/*.rs", recursive=True):
    for json, snake in re.findall(r'"([A-Za-z0-9$]+)" => Field::Key_(\w+),', open(path).read()):
        json_names.setdefault(snake.replace("_", "").lower(), json)


# Fields Kubernetes' JSON inlines into their parent (`json:",inline"`): their JSON name is `-`.
INLINE = {
    ("core.v1.Volume", "volume_source"),
    ("core.v1.PersistentVolumeSpec", "persistent_volume_source"),
    ("core.v1.EphemeralContainer", "ephemeral_container_common"),
    ("networking.v1.IngressRule", "ingress_rule_value"),
}


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def json_name(snake):
    snake = snake.removeprefix("r#")
    return json_names.get(snake.replace("_", "").lower()) or camel(snake)


def package(module):
    parts = module.split("/")
    if parts[0] == "apimachinery":
        parts = parts[2:]  # pkg/apis/meta/v1 -> apis/meta/v1, pkg/util/intstr -> util/intstr
        if parts[0] == "apis":
            parts = parts[1:]
    else:
        parts = parts[1:]
    return ".".join(parts)


def resolve(module, rust_type):
    """Turns a prost type path, relative to the module, into `package.Message`."""
    path = rust_type.replace(" ", "").split("::")
    mod = module.split("/")
    while path and path[0] == "super":
        path.pop(0)
        mod.pop()
    if path and path[0] == "":
        path.pop(0)
    return package("/".join(mod + path[:-1])) + "." + path[-1]




def fields(body):
    """Yields (prost attribute, field name, Rust type) for each field of a struct body."""
    body = re.sub(r"^\s*///.*$", "", body, flags=re.M)
    for chunk in body.split("#[prost(")[1:]:
        attr, rest = chunk.split(")]", 1)
        m = re.match(r"\s*pub ([\w#]+):\s*(.*?),?\s*$", rest, re.S)
        yield attr, m.group(1), m.group(2)

out = []
for module in MODULES:
    src = open(PB + module + "/mod.rs").read()
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        name, body = m.group(1), m.group(2)
        out.append(f"M {package(module)}.{name}")
        for attr, field, rust_type in fields(body):
            tag = re.search(r'tag = "(\d+)"', attr).group(1)
            rust_type = " ".join(rust_type.split())
            mp = re.match(r'(?:btree_map|map) = "string, (\w+)"', attr)
            if mp:
                kind = mp.group(1)
                target = kind
                if kind == "message":
                    target = resolve(module, re.search(r",\s*([\w:]+),?\s*>$", rust_type).group(1))
                out.append(f"F {tag} {json_name(field)} {kind} map {target}")
                continue
            kind = attr.split(",")[0].split("=")[0].strip()
            label = "repeated" if "repeated" in attr else "optional"
            json = "-" if (f"{package(module)}.{name}", field) in INLINE else json_name(field)
            line = f"F {tag} {json} {kind} {label}"
            if kind == "message":
                inner = re.search(r"<([^<>]*?(?:<[^<>]*>)?)>$", rust_type).group(1)
                inner = re.sub(r"^::prost::alloc::vec::Vec<|^::core::option::Option<", "", inner).rstrip(">")
                line += " " + resolve(module, inner)
            elif kind not in ("string", "int32", "int64", "bool", "bytes", "double"):
                sys.exit(f"{module} {name}.{field}: unknown prost kind {attr}")
            out.append(line)

dest = os.path.join(os.path.dirname(__file__), "..", "src", "api", "protobuf.schema")
with open(dest, "w") as f:
    f.write("# Generated by scripts/gen-protobuf-schema.py from k8s-pb 0.8 and k8s-openapi 0.29 (v1_33). Do not edit.\n")
    f.write("\n".join(out) + "\n")
print(f"{len(out)} lines -> {os.path.normpath(dest)}")
