//! The part of kubectl's JSONPath templates that scripts use: `{.a.b}`, `{.a[0]}`, `{.items[*].x}`,
//! `{..name}`, `[?(@.type=="Ready")]`, `{range ...}{end}`, quoted literals and plain text.

use anyhow::{Context, bail};
use serde_json::Value;

use super::output::sorted;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Node>);

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    AllValues,
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Recursive(String),
    Filter(Vec<Step>, Option<(String, Value)>),
}

impl Template {
    /// Parses a template such as `{range .items[*]}{.metadata.name}{"\n"}{end}`.
    ///
    /// # Errors
    /// On unbalanced braces, an unclosed `range`, or a path that does not parse.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = closing_brace(&rest[open + 1..])
                .with_context(|| format!("unclosed action in template \"{text}\""))?;
            pieces.push(Piece::Action(
                rest[open + 1..open + 1 + close].trim().to_owned(),
            ));
            rest = &rest[open + 2 + close..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        let mut iter = pieces.into_iter();
        let nodes = parse_nodes(&mut iter, false)?;
        Ok(Self(nodes))
    }

    /// Applies the template to a value; missing fields print nothing, as kubectl does by default.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.0, root, &mut out);
        out
    }
}

enum Piece {
    Text(String),
    Action(String),
}

fn closing_brace(s: &str) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

fn parse_nodes(
    pieces: &mut impl Iterator<Item = Piece>,
    in_range: bool,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.next() {
        match piece {
            Piece::Text(t) => nodes.push(Node::Text(t)),
            Piece::Action(a) if a == "end" => {
                if in_range {
                    return Ok(nodes);
                }
                bail!("unexpected {{end}} in template");
            }
            Piece::Action(a) if a.starts_with("range ") => {
                let path = parse_path(a["range ".len()..].trim())?;
                let body = parse_nodes(pieces, true)?;
                nodes.push(Node::Range(path, body));
            }
            Piece::Action(a) if a.starts_with('"') || a.starts_with('\'') => {
                nodes.push(Node::Text(unquote(&a)?))
            }
            Piece::Action(a) if a.is_empty() => {}
            Piece::Action(a) => nodes.push(Node::Path(parse_path(&a)?)),
        }
    }
    if in_range {
        bail!("a {{range}} has no {{end}}");
    }
    Ok(nodes)
}

fn unquote(s: &str) -> anyhow::Result<String> {
    let quote = s.chars().next().unwrap_or('"');
    let inner = s
        .strip_prefix(quote)
        .and_then(|r| r.strip_suffix(quote))
        .with_context(|| format!("unterminated string {s}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

fn parse_path(text: &str) -> anyhow::Result<Vec<Step>> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    if chars.first() == Some(&'$') {
        i = 1;
    }
    let mut steps = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => {
                let (name, next) = field_name(&chars, i + 2);
                steps.push(Step::Recursive(name));
                i = next;
            }
            '.' => {
                let (name, next) = field_name(&chars, i + 1);
                match name.as_str() {
                    "" => {}
                    "*" => steps.push(Step::AllValues),
                    _ => steps.push(Step::Field(name)),
                }
                i = next;
            }
            '[' => {
                let close = find_bracket_end(&chars, i + 1)
                    .with_context(|| format!("unclosed [ in \"{text}\""))?;
                let inner: String = chars[i + 1..close].iter().collect();
                steps.push(bracket_step(inner.trim())?);
                i = close + 1;
            }
            '@' => i += 1,
            c if i == 0 => {
                // A path without a leading dot, as in custom-columns specs written loosely.
                let (name, next) = field_name(&chars, i);
                if name.is_empty() {
                    bail!("unrecognized character {c:?} in \"{text}\"");
                }
                steps.push(Step::Field(name));
                i = next;
            }
            c => bail!("unrecognized character {c:?} in \"{text}\""),
        }
    }
    Ok(steps)
}

fn field_name(chars: &[char], mut i: usize) -> (String, usize) {
    let mut name = String::new();
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                name.push(chars[i + 1]);
                i += 2;
            }
            '.' | '[' => break,
            c => {
                name.push(c);
                i += 1;
            }
        }
    }
    (name, i)
}

fn find_bracket_end(chars: &[char], from: usize) -> Option<usize> {
    let mut quote = None;
    let mut depth = 0;
    for (i, &c) in chars.iter().enumerate().skip(from) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            (None, ']') => depth -= 1,
            _ => {}
        }
    }
    None
}

fn bracket_step(inner: &str) -> anyhow::Result<Step> {
    if inner == "*" {
        return Ok(Step::AllValues);
    }
    if inner.starts_with('\'') || inner.starts_with('"') {
        return Ok(Step::Field(unquote(inner)?));
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        for op in ["==", "!="] {
            if let Some((left, right)) = filter.split_once(op) {
                let right = right.trim();
                let literal = if right.starts_with('"') || right.starts_with('\'') {
                    Value::String(unquote(right)?)
                } else {
                    serde_json::from_str(right)
                        .with_context(|| format!("unrecognized literal {right} in filter"))?
                };
                return Ok(Step::Filter(
                    parse_path(left.trim())?,
                    Some((op.to_owned(), literal)),
                ));
            }
        }
        return Ok(Step::Filter(parse_path(filter.trim())?, None));
    }
    if let Some((a, b)) = inner.split_once(':') {
        let bound = |s: &str| -> anyhow::Result<Option<i64>> {
            let s = s.split(':').next().unwrap_or_default().trim();
            if s.is_empty() {
                Ok(None)
            } else {
                Ok(Some(
                    s.parse()
                        .with_context(|| format!("invalid array index {s}"))?,
                ))
            }
        };
        return Ok(Step::Slice(bound(a)?, bound(b)?));
    }
    Ok(Step::Index(
        inner
            .parse()
            .with_context(|| format!("invalid array index {inner}"))?,
    ))
}

fn render_nodes(nodes: &[Node], current: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(steps) => {
                let values = evaluate(steps, current);
                out.push_str(
                    &values
                        .iter()
                        .map(|v| value_text(v))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            Node::Range(steps, body) => {
                for v in evaluate(steps, current) {
                    render_nodes(body, v, out);
                }
            }
        }
    }
}

fn evaluate<'a>(steps: &[Step], root: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            apply(step, v, &mut next);
        }
        current = next;
    }
    current
}

fn apply<'a>(step: &Step, v: &'a Value, next: &mut Vec<&'a Value>) {
    match step {
        Step::Field(name) => next.extend(v.get(name.as_str())),
        Step::AllValues => match v {
            Value::Array(items) => next.extend(items.iter()),
            Value::Object(map) => next.extend(map.values()),
            _ => {}
        },
        Step::Index(i) => {
            if let Value::Array(items) = v {
                let idx = if *i < 0 { items.len() as i64 + i } else { *i };
                if let Ok(idx) = usize::try_from(idx) {
                    next.extend(items.get(idx));
                }
            }
        }
        Step::Slice(a, b) => {
            if let Value::Array(items) = v {
                let len = items.len() as i64;
                let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                let start = a.map_or(0, norm);
                let end = b.map_or(len, norm);
                if start < end {
                    next.extend(items[start as usize..end as usize].iter());
                }
            }
        }
        Step::Recursive(name) => recurse(name, v, next),
        Step::Filter(path, test) => {
            let items: Vec<&Value> = match v {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let found = evaluate(path, item);
                let keep = match test {
                    None => !found.is_empty(),
                    Some((op, literal)) => {
                        let equal = found.contains(&literal);
                        if op == "==" {
                            equal
                        } else {
                            !found.is_empty() && !equal
                        }
                    }
                };
                if keep {
                    next.push(item);
                }
            }
        }
    }
}

fn recurse<'a>(name: &str, v: &'a Value, next: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if let Some(found) = map.get(name) {
                next.push(found);
            }
            for child in map.values() {
                recurse(name, child, next);
            }
        }
        Value::Array(items) => items.iter().for_each(|child| recurse(name, child, next)),
        _ => {}
    }
}

/// A result as kubectl prints it: strings bare, maps and lists as compact JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(_) | Value::Array(_) => sorted(v).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v)
    }

    #[test]
    fn paths_indexes_and_wildcards_select_what_kubectl_selects() {
        let list = json!({"metadata": {"resourceVersion": "7"}, "items": [
            {"metadata": {"name": "a", "annotations": {"x.io/y": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        ]});
        assert_eq!(render("{.items[*].metadata.name}", &list), "a b");
        assert_eq!(render("{.metadata.resourceVersion}", &list), "7");
        assert_eq!(render("{.items[0].spec.containers[0].image}", &list), "i");
        assert_eq!(render("{.items[-1].metadata.name}", &list), "b");
        assert_eq!(
            render("{.items[0].spec.containers[0]}", &list),
            r#"{"image":"i","name":"c"}"#
        );
        assert_eq!(
            render("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list),
            "a\nb\n"
        );
        assert_eq!(render("name={.items[1].metadata.name}!", &list), "name=b!");
        assert_eq!(
            render("{.items[0].metadata.annotations.x\\.io/y}", &list),
            "1"
        );
        assert_eq!(
            render("{.items[0].metadata.annotations['x.io/y']}", &list),
            "1"
        );
        assert_eq!(
            render(
                "{.items[*].status.conditions[?(@.type==\"Ready\")].status}",
                &list
            ),
            "True"
        );
        assert_eq!(render("{..name}", &list), "a c b");
        assert_eq!(render("{.nothing.here}", &list), "");
        assert!(Template::parse("{.a").is_err());
        assert!(Template::parse("{range .items[*]}{.x}").is_err());
    }
}
