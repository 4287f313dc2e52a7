//! Decodes the protobuf request bodies of kubectl's typed clients into the JSON the API stores.
//!
//! kubectl 1.32 sends `application/vnd.kubernetes.protobuf` for its generator commands
//! (`create deployment|namespace|configmap|secret|service|job`, and drain's delete fallback). A
//! body is the magic `k8s\0` followed by a `runtime.Unknown` that wraps the object's own message.
//! The field numbers come from `protobuf.schema`, generated from the k8s-pb and k8s-openapi
//! crates by `scripts/gen-protobuf-schema.py`, so one generic decoder serves every kind the schema
//! covers: core/v1, apps/v1, batch/v1, coordination/v1, policy/v1 and meta/v1.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

const SCHEMA: &str = include_str!("protobuf.schema");
const MAGIC: &[u8] = b"k8s\0";
/// Kubernetes objects nest about a dozen levels deep; anything far deeper is hostile.
const MAX_DEPTH: usize = 64;

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body does not start with the Kubernetes protobuf magic.
    #[error("the body does not start with the Kubernetes protobuf magic \"k8s\\0\"")]
    Magic,
    /// The wire data is cut short or malformed.
    #[error("malformed protobuf in {message}: {what}")]
    Wire {
        /// The message being decoded.
        message: String,
        /// What was wrong.
        what: String,
    },
    /// The envelope names a kind the schema does not have.
    #[error(
        "protobuf bodies of kind {kind} ({api_version}) are not decoded by wk; send JSON or YAML instead"
    )]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// A field number the schema does not list for its message.
    #[error("unknown field number {number} in protobuf message {message}")]
    UnknownField {
        /// The message being decoded.
        message: String,
        /// The field number.
        number: u64,
    },
}

/// Decodes a whole protobuf request body into a JSON object with `apiVersion` and `kind` set.
///
/// # Errors
/// A missing magic, malformed wire data, an unknown kind or an unknown field.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let rest = body.strip_prefix(MAGIC).ok_or(Error::Magic)?;
    let schema = schema();
    let unknown = decode_message(schema, "runtime.Unknown", rest, 0)?;
    let type_meta = unknown.get("typeMeta");
    let field = |name: &str| {
        type_meta
            .and_then(|t| t.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let raw = match unknown.get("raw").and_then(Value::as_str) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("the decoder itself encoded raw as base64"),
        None => Vec::new(),
    };
    let message = message_name(schema, &api_version, &kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let object = decode_message(schema, message, &raw, 0)?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = object {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

/// The schema message for an apiVersion and kind: `apps/v1` + `Deployment` is
/// `apps.v1.Deployment`, `v1` is core; options such as DeleteOptions live in meta.v1.
fn message_name<'s>(schema: &'s Schema, api_version: &str, kind: &str) -> Option<&'s str> {
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("core", api_version));
    let group = group.split('.').next().unwrap_or(group);
    [
        format!("{group}.{version}.{kind}"),
        format!("meta.v1.{kind}"),
    ]
    .into_iter()
    .find_map(|name| {
        schema
            .messages
            .get_key_value(name.as_str())
            .map(|(k, _)| *k)
    })
}

// ---- the schema ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Int32,
    Int64,
    Bool,
    Bytes,
    Double,
    Message,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Optional,
    Repeated,
    Map,
}

#[derive(Debug)]
struct Field {
    json: &'static str,
    kind: Kind,
    label: Label,
    /// The message type of a message field, or of a map's values.
    target: &'static str,
    /// A map's value kind.
    value_kind: Kind,
}

struct Schema {
    messages: HashMap<&'static str, HashMap<u64, Field>>,
}

fn schema() -> &'static Schema {
    static PARSED: OnceLock<Schema> = OnceLock::new();
    PARSED.get_or_init(|| parse_schema(SCHEMA))
}

fn kind(word: &str) -> Kind {
    match word {
        "string" => Kind::String,
        "int32" => Kind::Int32,
        "int64" => Kind::Int64,
        "bool" => Kind::Bool,
        "bytes" => Kind::Bytes,
        "double" => Kind::Double,
        _ => Kind::Message,
    }
}

/// Parses the generated schema; it is part of the binary, so a malformed line is a build bug.
fn parse_schema(text: &'static str) -> Schema {
    let mut messages: HashMap<&'static str, HashMap<u64, Field>> = HashMap::new();
    let mut current = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["M", name] => {
                messages.entry(name).or_default();
                current = Some(*name);
            }
            ["F", number, json, kind_word, label, rest @ ..] => {
                let target = rest.first().copied().unwrap_or_default();
                let (label, kind_, value_kind) = match *label {
                    "repeated" => (Label::Repeated, kind(kind_word), Kind::Message),
                    "map" => (Label::Map, Kind::Message, kind(kind_word)),
                    _ => (Label::Optional, kind(kind_word), Kind::Message),
                };
                let message = current.expect("protobuf.schema: a field before any message");
                let number = number.parse().expect("protobuf.schema: field number");
                let field = Field {
                    json,
                    kind: kind_,
                    label,
                    target,
                    value_kind,
                };
                messages.entry(message).or_default().insert(number, field);
            }
            _ => panic!("protobuf.schema: malformed line {line:?}"),
        }
    }
    Schema { messages }
}

// ---- the wire format ----

struct Reader<'a> {
    buf: &'a [u8],
    message: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl Into<String>) -> Error {
        Error::Wire {
            message: self.message.to_string(),
            what: what.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| self.err("a varint is cut short"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.buf.len() {
            return Err(self.err(format!(
                "a field of {n} bytes runs past the end ({} left)",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], Error> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| self.err("a length does not fit in memory"))?)
    }

    /// Skips a field of a wire type the schema does not expect, so the error can name it.
    fn skip(&mut self, wire_type: u64) -> Result<(), Error> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.length_delimited().map(drop),
            5 => self.take(4).map(drop),
            other => Err(self.err(format!("unsupported wire type {other}"))),
        }
    }
}

/// The schema's JSON name of a field whose message Kubernetes' JSON inlines into its parent.
const INLINE: &str = "-";

fn decode_message(schema: &Schema, name: &str, bytes: &[u8], depth: usize) -> Result<Value, Error> {
    let fields = schema.messages.get(name).ok_or_else(|| Error::Wire {
        message: name.to_string(),
        what: "the schema has no such message".into(),
    })?;
    let mut r = Reader {
        buf: bytes,
        message: name,
    };
    if depth > MAX_DEPTH {
        return Err(r.err(format!("nested deeper than {MAX_DEPTH} messages")));
    }
    let mut out = Map::new();
    while !r.buf.is_empty() {
        let key = r.varint()?;
        let (number, wire_type) = (key >> 3, key & 7);
        let Some(field) = fields.get(&number) else {
            return Err(Error::UnknownField {
                message: name.to_string(),
                number,
            });
        };
        match field.label {
            Label::Map => {
                let entry = r.length_delimited()?;
                let (k, v) = decode_map_entry(schema, name, field, entry, depth)?;
                let map = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(map), Some(v)) = (map, v) {
                    map.insert(k, v);
                }
            }
            Label::Repeated => {
                let list = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    unreachable!("repeated fields are always arrays")
                };
                let packed = wire_type == 2 && matches!(field.kind, Kind::Int32 | Kind::Int64);
                if packed {
                    let mut inner = Reader {
                        buf: r.length_delimited()?,
                        message: name,
                    };
                    while !inner.buf.is_empty() {
                        list.push(scalar(&mut inner, field.kind)?.unwrap_or(Value::Null));
                    }
                } else {
                    let v = value(
                        schema,
                        &mut r,
                        field,
                        field.kind,
                        field.target,
                        wire_type,
                        depth,
                    )?;
                    list.push(v.unwrap_or(Value::Null));
                }
            }
            Label::Optional => {
                // Go's protobuf encodes every non-pointer string, "" included, where its JSON
                // has `omitempty`: an empty string means "not set", so defaulting applies.
                match value(
                    schema,
                    &mut r,
                    field,
                    field.kind,
                    field.target,
                    wire_type,
                    depth,
                )? {
                    Some(Value::String(s)) if s.is_empty() && field.kind == Kind::String => {
                        out.remove(field.json)
                    }
                    // An inlined message (`json:",inline"`): its fields are the parent's.
                    Some(Value::Object(inner)) if field.json == INLINE => {
                        out.extend(inner);
                        None
                    }
                    Some(v) => out.insert(field.json.to_string(), v),
                    None => out.remove(field.json),
                };
            }
        }
    }
    Ok(Value::Object(out))
}

fn decode_map_entry(
    schema: &Schema,
    message: &str,
    field: &Field,
    entry: &[u8],
    depth: usize,
) -> Result<(String, Option<Value>), Error> {
    let mut r = Reader {
        buf: entry,
        message,
    };
    let (mut key, mut val) = (String::new(), None);
    while !r.buf.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let bytes = r.length_delimited()?;
                key = utf8(&r, bytes)?;
            }
            (2, wire_type) => {
                val = value(
                    schema,
                    &mut r,
                    field,
                    field.value_kind,
                    field.target,
                    wire_type,
                    depth,
                )?;
            }
            (n, wire_type) => {
                r.skip(wire_type)?;
                return Err(r.err(format!("map {} has an entry with field {n}", field.json)));
            }
        }
    }
    // An entry without a value means the zero value, as in Go.
    let val = val.or(Some(match field.value_kind {
        Kind::String | Kind::Bytes => Value::String(String::new()),
        _ => Value::Object(Map::new()),
    }));
    Ok((key, val))
}

fn utf8(r: &Reader<'_>, bytes: &[u8]) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| r.err("a string is not valid UTF-8"))
}

/// Decodes one value of a field; `None` means the JSON has no value (a zero Time).
fn value(
    schema: &Schema,
    r: &mut Reader<'_>,
    field: &Field,
    kind: Kind,
    target: &str,
    wire_type: u64,
    depth: usize,
) -> Result<Option<Value>, Error> {
    let expected = match kind {
        Kind::Int32 | Kind::Int64 | Kind::Bool => 0,
        Kind::Double => 1,
        Kind::String | Kind::Bytes | Kind::Message => 2,
    };
    if wire_type != expected {
        return Err(r.err(format!(
            "field {} has wire type {wire_type}, expected {expected}",
            field.json
        )));
    }
    if kind != Kind::Message {
        return scalar(r, kind);
    }
    let bytes = r.length_delimited()?;
    let inner = decode_message(schema, target, bytes, depth + 1)?;
    Ok(special(target, inner))
}

fn scalar(r: &mut Reader<'_>, kind: Kind) -> Result<Option<Value>, Error> {
    Ok(Some(match kind {
        Kind::Int32 => Value::from(r.varint()? as i32),
        Kind::Int64 => Value::from(r.varint()? as i64),
        Kind::Bool => Value::Bool(r.varint()? != 0),
        Kind::Double => {
            let bytes: [u8; 8] = r.take(8)?.try_into().expect("took 8 bytes");
            Number::from_f64(f64::from_le_bytes(bytes)).map_or(Value::Null, Value::Number)
        }
        Kind::String => {
            let bytes = r.length_delimited()?;
            Value::String(utf8(r, bytes)?)
        }
        Kind::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.length_delimited()?))
        }
        Kind::Message => unreachable!("messages are decoded by value()"),
    }))
}

/// The messages whose JSON form is not an object: Quantity, IntOrString, Time and raw JSON.
fn special(target: &str, v: Value) -> Option<Value> {
    let get = |k: &str| v.get(k).cloned();
    let int = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    match target {
        "api.resource.Quantity" => Some(get("string").unwrap_or(Value::String(String::new()))),
        "util.intstr.IntOrString" => Some(if int("type") == 1 {
            get("strVal").unwrap_or(Value::String(String::new()))
        } else {
            Value::from(int("intVal"))
        }),
        "meta.v1.Time" | "meta.v1.MicroTime" => {
            let (seconds, nanos) = (int("seconds"), int("nanos"));
            if seconds == 0 && nanos == 0 {
                return None;
            }
            let ts = jiff::Timestamp::new(seconds, i32::try_from(nanos).unwrap_or(0)).ok()?;
            let format = if target == "meta.v1.Time" {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S.%6fZ"
            };
            Some(Value::String(ts.strftime(format).to_string()))
        }
        "runtime.RawExtension" | "meta.v1.FieldsV1" => {
            let raw = v.get("raw").and_then(Value::as_str)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
            serde_json::from_slice(&bytes).ok()
        }
        _ => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf writer, enough to build the bodies kubectl sends.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            while v >= 0x80 {
                self.0.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn int(&mut self, n: u64, v: i64) -> &mut Self {
            self.varint(n << 3).varint(v as u64)
        }
        fn bytes(&mut self, n: u64, b: &[u8]) -> &mut Self {
            self.varint((n << 3) | 2).varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, n: u64, s: &str) -> &mut Self {
            self.bytes(n, s.as_bytes())
        }
        fn msg(&mut self, n: u64, f: impl FnOnce(&mut W)) -> &mut Self {
            let mut inner = W::default();
            f(&mut inner);
            self.bytes(n, &inner.0)
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: &W) -> Vec<u8> {
        let mut w = W::default();
        w.msg(1, |t| {
            t.str(1, api_version).str(2, kind);
        })
        .bytes(2, &raw.0)
        .str(3, "")
        .str(4, "");
        [MAGIC, &w.0].concat()
    }

    #[test]
    fn decodes_a_deployment_like_kubectl_create_deployment() {
        let mut d = W::default();
        d.msg(1, |m| {
            m.str(1, "hello").msg(8, |_| {}).msg(11, |l| {
                l.str(1, "app").str(2, "hello");
            });
        })
        .msg(2, |s| {
            s.int(1, 2)
                .msg(2, |sel| {
                    sel.msg(1, |e| {
                        e.str(1, "app").str(2, "hello");
                    });
                })
                .msg(3, |t| {
                    t.msg(1, |m| {
                        m.msg(8, |_| {}).msg(11, |l| {
                            l.str(1, "app").str(2, "hello");
                        });
                    })
                    .msg(2, |p| {
                        p.msg(2, |c| {
                            c.str(1, "hello")
                                .str(2, "hello:v1")
                                .str(3, "serve")
                                .str(3, "--port=8000")
                                .msg(6, |port| {
                                    port.int(3, 8000).str(4, "TCP");
                                })
                                .msg(8, |_| {});
                        });
                    });
                })
                .msg(4, |_| {});
        })
        .msg(3, |_| {});
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "hello", "labels": {"app": "hello"}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "hello"}},
                    "template": {
                        "metadata": {"labels": {"app": "hello"}},
                        "spec": {"containers": [{
                            "name": "hello", "image": "hello:v1",
                            "command": ["serve", "--port=8000"],
                            "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                            "resources": {}
                        }]}
                    },
                    "strategy": {}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn decodes_special_messages_to_their_json_forms() {
        let mut svc = W::default();
        svc.msg(1, |m| {
            m.str(1, "web").msg(8, |t| {
                t.int(1, 1_700_000_000);
            });
        })
        .msg(2, |s| {
            s.msg(1, |p| {
                p.str(1, "http").int(3, 80).msg(4, |ios| {
                    ios.int(1, 1).str(3, "http-alt");
                });
            })
            .msg(1, |p| {
                p.int(3, 81).msg(4, |ios| {
                    ios.int(1, 0).int(2, 8081);
                });
            })
            .str(5, "100.65.0.10");
        });
        let v = decode(&envelope("v1", "Service", &svc)).unwrap();
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"]["ports"][0]["targetPort"], "http-alt");
        assert_eq!(v["spec"]["ports"][1]["targetPort"], 8081);
        assert_eq!(v["spec"]["externalIPs"], json!(["100.65.0.10"]));

        let mut pod = W::default();
        pod.msg(2, |s| {
            s.msg(2, |c| {
                c.str(1, "app").msg(8, |r| {
                    r.msg(1, |entry| {
                        entry.str(1, "memory").msg(2, |q| {
                            q.str(1, "64Mi");
                        });
                    });
                });
            });
        });
        let v = decode(&envelope("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "64Mi"
        );
    }

    #[test]
    fn decodes_secret_bytes_as_base64_and_delete_options_from_meta() {
        let mut s = W::default();
        s.msg(1, |m| {
            m.str(1, "creds");
        })
        .msg(2, |e| {
            e.str(1, "password").bytes(2, b"hunter2");
        })
        .str(3, "Opaque");
        let v = decode(&envelope("v1", "Secret", &s)).unwrap();
        assert_eq!(v["data"]["password"], "aHVudGVyMg==");
        assert_eq!(v["type"], "Opaque");

        let mut d = W::default();
        d.int(1, 0).str(4, "Background");
        let v = decode(&envelope("v1", "DeleteOptions", &d)).unwrap();
        assert_eq!(v["gracePeriodSeconds"], 0);
        assert_eq!(v["propagationPolicy"], "Background");
    }

    #[test]
    fn rejects_hostile_and_unknown_bodies_with_a_reason() {
        assert!(matches!(decode(b"{\"kind\":\"Pod\"}"), Err(Error::Magic)));
        let mut w = W::default();
        w.str(1, "x");
        let err = decode(&envelope("example.com/v1", "Widget", &w)).unwrap_err();
        assert!(err.to_string().contains("Widget"), "{err}");
        let mut bad = W::default();
        bad.int(99, 1);
        let err = decode(&envelope("v1", "Namespace", &bad)).unwrap_err();
        assert!(err.to_string().contains("field number 99"), "{err}");
        // A length that runs past the end of the body.
        let mut cut = W::default();
        cut.varint((1 << 3) | 2).varint(1000);
        let err = decode(&envelope("v1", "Namespace", &cut)).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
        // Truncating a valid body anywhere gives an error, never a panic.
        let mut ns = W::default();
        ns.msg(1, |m| {
            m.str(1, "team-a").msg(11, |l| {
                l.str(1, "k").str(2, "v");
            });
        });
        let body = envelope("v1", "Namespace", &ns);
        for n in 0..body.len() {
            let _ = decode(&body[..n]);
        }
        assert_eq!(decode(&body).unwrap()["metadata"]["labels"]["k"], "v");
    }

    #[test]
    fn every_schema_message_reference_resolves() {
        let schema = schema();
        for (name, fields) in &schema.messages {
            for f in fields.values() {
                let needs = match f.label {
                    Label::Map => f.value_kind == Kind::Message,
                    _ => f.kind == Kind::Message,
                };
                if needs {
                    assert!(
                        schema.messages.contains_key(f.target),
                        "{name}.{} -> {}",
                        f.json,
                        f.target
                    );
                }
            }
        }
    }
}
