//! Label and field selectors as the list and watch query parameters carry them.
//!
//! The label selector grammar, its canonical string form and its error messages follow
//! `k8s.io/apimachinery/pkg/labels` (`labels.Parse`, `Selector.String`) and
//! `metav1.LabelSelectorAsSelector`. Field selectors follow `k8s.io/apimachinery/pkg/fields`
//! (`fields.ParseSelector`, including its `\,` / `\=` / `\\` escapes).

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// Why a selector could not be parsed, validated or applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    /// One requirement of a label selector string was malformed; wraps the precise cause.
    #[error("unable to parse requirement: {0}")]
    Requirement(Box<SelectorError>),
    /// The label selector text does not follow the grammar, e.g. `found ',', expected: identifier`.
    #[error("{0}")]
    Syntax(String),
    /// A label key is not a qualified name.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidLabelKey {
        /// The rejected key.
        key: String,
        /// Every rule the key breaks, joined with `; `.
        reason: String,
    },
    /// A label value is not a valid label value.
    #[error("invalid label value {value:?} for key {key:?}: {reason}")]
    InvalidLabelValue {
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
        /// Every rule the value breaks, joined with `; `.
        reason: String,
    },
    /// The number or form of the values does not suit the operator.
    #[error("invalid values for key {key:?}: {reason}")]
    InvalidValues {
        /// The key of the requirement.
        key: String,
        /// What is wrong, in kube's words.
        reason: String,
    },
    /// A `matchExpressions` operator other than In, NotIn, Exists or DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    InvalidOperator(String),
    /// A JSON `metav1.LabelSelector` with the wrong shape.
    #[error("invalid label selector: {0}")]
    InvalidJson(String),
    /// A field selector term without an operator.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidFieldTerm {
        /// The whole field selector.
        selector: String,
        /// The term that could not be split into field, operator and value.
        term: String,
    },
    /// A field selector value with a backslash before anything but `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A field selector value with a bare `,` or `=`.
    #[error("invalid field selector: unescaped character in value: {0}")]
    UnescapedCharacter(char),
    /// A field selector names a field the resource cannot be filtered by.
    #[error("field label not supported: {0}")]
    FieldNotSupported(String),
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

/// How a label requirement relates its key to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value` (same meaning as `=`, kept so that the string form round-trips)
    DoubleEquals,
    /// `key!=value` (also true when the key is absent)
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)` (also true when the key is absent)
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5` (integer comparison)
    GreaterThan,
    /// `key<5` (integer comparison)
    LessThan,
}

/// One condition of a label selector: a key, an operator and a sorted, de-duplicated value set.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement after the checks of kube's `labels.NewRequirement`.
    pub fn new(key: &str, op: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        validate_label_key(key).map_err(|reason| SelectorError::InvalidLabelKey {
            key: key.to_string(),
            reason,
        })?;
        let bad = |reason: &str| SelectorError::InvalidValues {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(bad(
                    "for 'in', 'notin' operators, values set can't be empty",
                ));
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                return Err(bad("exact-match compatibility requires one single value"));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(bad(
                    "values set must be empty for exists and does not exist",
                ));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    return Err(bad(
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                if values.iter().any(|v| v.parse::<i64>().is_err()) {
                    return Err(bad(
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
            }
            _ => {}
        }
        for v in &values {
            validate_label_value(v).map_err(|reason| SelectorError::InvalidLabelValue {
                key: key.to_string(),
                value: v.clone(),
                reason,
            })?;
        }
        let values: BTreeSet<String> = values.into_iter().collect();
        Ok(Requirement {
            key: key.to_string(),
            op,
            values: values.into_iter().collect(),
        })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values, sorted and without duplicates (empty for Exists and DoesNotExist).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether this requirement holds for the given label set (`None` means no labels).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let found = labels.and_then(|l| l.get(&self.key)).map(label_text);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                found.is_some_and(|v| has(&v))
            }
            Operator::NotIn | Operator::NotEquals => found.is_none_or(|v| !has(&v)),
            Operator::Exists => found.is_some(),
            Operator::DoesNotExist => found.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(have)) = found.map(|v| v.parse::<i64>()) else {
                    return false;
                };
                let Some(Ok(want)) = self.values.first().map(|v| v.parse::<i64>()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// A label's value as text: strings as they are, anything else as its JSON text.
fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.op {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.op, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A parsed label selector: the AND of its requirements, sorted by key.
///
/// The default value selects everything. [`LabelSelector::nothing`] (what a JSON `null`
/// selector turns into, as in kube) selects nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`,
    /// also `==`, `>` and `<`. Whitespace around tokens is ignored; an empty string selects
    /// everything. Errors read like kube-apiserver's (`unable to parse requirement: ...`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            items: lex(s),
            pos: 0,
        };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` (`matchLabels` + `matchExpressions` with In, NotIn,
    /// Exists, DoesNotExist), validating keys, values and operators like
    /// `metav1.LabelSelectorAsSelector`. JSON `null` gives a selector that matches nothing;
    /// an empty object gives one that matches everything.
    pub fn from_json(sel: &Value) -> Result<Self, SelectorError> {
        let obj = match sel {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            _ => {
                return Err(SelectorError::InvalidJson(
                    "a label selector must be an object".to_string(),
                ));
            }
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, v) in labels {
                    let Value::String(v) = v else {
                        return Err(SelectorError::InvalidJson(format!(
                            "matchLabels[{k:?}] must be a string"
                        )));
                    };
                    requirements.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
                }
            }
            Some(_) => {
                return Err(SelectorError::InvalidJson(
                    "matchLabels must be an object".to_string(),
                ));
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for expr in exprs {
                    requirements.push(expression_requirement(expr)?);
                }
            }
            Some(_) => {
                return Err(SelectorError::InvalidJson(
                    "matchExpressions must be an array".to_string(),
                ));
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Exact-match selector for a plain label map (a Service's `spec.selector`, kube's
    /// `SelectorFromSet`). Values are not validated; an empty map selects everything.
    pub fn from_labels(labels: &Map<String, Value>) -> Self {
        let mut requirements: Vec<Requirement> = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Operator::Equals,
                values: vec![label_text(v)],
            })
            .collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    /// The selector that matches no object at all (kube's `labels.Nothing()`).
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Whether the labels satisfy every requirement (`None` means the object has no labels).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when the selector does not restrict anything.
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// The single value `key` must have, when the selector pins it with `=`, `==` or a
    /// one-value `in` (kube's `RequiresExactMatch`).
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.op, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// One `matchExpressions` entry as a requirement.
fn expression_requirement(expr: &Value) -> Result<Requirement, SelectorError> {
    let Value::Object(expr) = expr else {
        return Err(SelectorError::InvalidJson(
            "matchExpressions entries must be objects".to_string(),
        ));
    };
    let key = match expr.get("key") {
        Some(Value::String(k)) => k.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => {
            return Err(SelectorError::InvalidJson(
                "matchExpressions key must be a string".to_string(),
            ));
        }
    };
    let op_text = match expr.get("operator") {
        Some(Value::String(o)) => o.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => {
            return Err(SelectorError::InvalidJson(
                "matchExpressions operator must be a string".to_string(),
            ));
        }
    };
    let op = match op_text {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => return Err(SelectorError::InvalidOperator(other.to_string())),
    };
    let values = match expr.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(SelectorError::InvalidJson(
                    "matchExpressions values must be strings".to_string(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(SelectorError::InvalidJson(
                "matchExpressions values must be an array".to_string(),
            ));
        }
    };
    Requirement::new(key, op, values)
}

// ----- lexer (a byte-for-byte port of labels.Lexer) -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    tok: Tok,
    lit: &'a str,
}

const END: Item<'static> = Item {
    tok: Tok::End,
    lit: "",
};

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the selector into tokens. A NUL byte ends the input, as in kube's lexer.
fn lex(s: &str) -> Vec<Item<'_>> {
    let bytes = s.as_bytes();
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        while is_whitespace(at(pos)) {
            pos += 1;
        }
        let ch = at(pos);
        if ch == 0 {
            items.push(END);
            return items;
        }
        let start = pos;
        if is_special(ch) {
            // Longest run of special symbols that is still a token.
            let mut last = None;
            while is_special(at(pos)) {
                let candidate = s.get(start..pos + 1).unwrap_or("");
                match keyword(candidate) {
                    Some(tok) => {
                        last = Some(Item {
                            tok,
                            lit: candidate,
                        });
                        pos += 1;
                    }
                    None => break,
                }
            }
            // Every single special symbol is a token, so `last` is always set here.
            items.push(last.unwrap_or(END));
        } else {
            while !(at(pos) == 0 || is_special(at(pos)) || is_whitespace(at(pos))) {
                pos += 1;
            }
            let lit = s.get(start..pos).unwrap_or("");
            let tok = match keyword(lit) {
                Some(t @ (Tok::In | Tok::NotIn)) => t,
                _ => Tok::Identifier,
            };
            items.push(Item { tok, lit });
        }
    }
}

// ----- parser (a port of labels.Parser) -----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn lookahead(&self, ctx: Ctx) -> (Tok, &'a str) {
        let item = self.items.get(self.pos).copied().unwrap_or(END);
        let tok = match item.tok {
            Tok::In | Tok::NotIn if ctx == Ctx::Values => Tok::Identifier,
            t => t,
        };
        (tok, item.lit)
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, &'a str) {
        let r = self.lookahead(ctx);
        if self.pos < self.items.len() {
            self.pos += 1;
        }
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| SelectorError::Requirement(Box::new(e)))?;
                    requirements.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(SelectorError::Syntax(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Tok::End => return Ok(requirements),
                _ => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return Requirement::new(key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(key, op, values.into_iter().collect())
    }

    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(&'a str, Option<Operator>), SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(SelectorError::Syntax(format!(
                "found '{lit}', expected: identifier"
            )));
        }
        validate_label_key(lit).map_err(|reason| SelectorError::InvalidLabelKey {
            key: lit.to_string(),
            reason,
        })?;
        let (t, _) = self.lookahead(Ctx::Values);
        if (t == Tok::End || t == Tok::Comma) && op != Some(Operator::DoesNotExist) {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => {
                return Err(SelectorError::Syntax(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            }
        })
    }

    fn parse_values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(SelectorError::Syntax(format!(
                "found '{lit}' expected: '('"
            )));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let set = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(SelectorError::Syntax(format!(
                        "found '{lit}', expected: ')'"
                    )));
                }
                Ok(set)
            }
            Tok::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(SelectorError::Syntax(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    set.insert(lit.to_string());
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(set),
                        _ => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{l2}', expected: ',' or ')'"
                            )));
                        }
                    }
                }
                Tok::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        set.insert(String::new());
                        return Ok(set);
                    }
                    if t2 == Tok::Comma {
                        set.insert(String::new());
                    }
                }
                _ => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Tok::Identifier {
            return Ok(BTreeSet::from([lit.to_string()]));
        }
        Err(SelectorError::Syntax(format!(
            "found '{lit}', expected: identifier"
        )))
    }
}

// ----- validation (k8s.io/apimachinery/pkg/util/validation) -----

const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// kube's `validation.RegexError`.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(e);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain_text(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => ok(f) && ok(l) && b.iter().all(|c| ok(c) || *c == b'-'),
            _ => false,
        }
    })
}

/// Checks a label key: an optional DNS-1123 subdomain prefix (at most 253 characters) and `/`,
/// then a name of at most 63 characters that starts and ends with an alphanumeric character
/// and has only alphanumerics, `-`, `_` and `.` inside. The error joins kube's messages.
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let mut errs: Vec<String> = Vec::new();
    let parts: Vec<&str> = k.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push(format!("prefix part {}", max_len_error(253)));
                }
                if !is_dns1123_subdomain_text(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_ERR,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            return Err(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// Checks a label value: at most 63 characters, empty allowed, otherwise starting and ending
/// with an alphanumeric character with only alphanumerics, `-`, `_` and `.` inside.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !(v.is_empty() || is_qualified_name_part(v)) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------------

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    /// The dotted field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The unescaped value.
    pub value: String,
    /// True for `!=`, false for `=` and `==`.
    pub negated: bool,
}

/// A parsed field selector: the AND of its terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Fields every resource can be filtered by, whatever its own list says.
const ALWAYS_SUPPORTED_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses `metadata.name=x,spec.nodeName==n,status.phase!=Failed`. Terms are split on
    /// unescaped commas; values may escape `\,`, `\=` and `\\`. The empty string selects
    /// everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(SelectorError::InvalidFieldTerm {
                    selector: s.to_string(),
                    term: part.to_string(),
                });
            };
            terms.push(FieldTerm {
                field: field.to_string(),
                value: unescape_field_value(rhs)?,
                negated: op == "!=",
            });
        }
        // kube sorts the raw terms; sorting the normalised text keeps `Display` canonical.
        terms.sort_by_cached_key(term_text);
        Ok(FieldSelector { terms })
    }

    /// Checks that every field named is in `supported` (`metadata.name` and
    /// `metadata.namespace` are always accepted, as in kube); otherwise
    /// `field label not supported: X`.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        for t in &self.terms {
            let f = t.field.as_str();
            if !ALWAYS_SUPPORTED_FIELDS.contains(&f) && !supported.contains(&f) {
                return Err(SelectorError::FieldNotSupported(t.field.clone()));
            }
        }
        Ok(())
    }

    /// Whether the object satisfies every term. Fields are looked up by dotted path; a missing
    /// field (or `null`) compares as `""`, other non-string values by their JSON text.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let have = field_text(obj, &t.field);
            (have == t.value) != t.negated
        })
    }

    /// `Some(name)` when the selector is exactly `metadata.name=NAME` (or `==`).
    pub fn single_name(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [t] if t.field == "metadata.name" && !t.negated => Some(&t.value),
            _ => None,
        }
    }

    /// True when the selector does not restrict anything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms, in the sorted order kube keeps them.
    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&term_text(t))?;
        }
        Ok(())
    }
}

/// A term in its canonical `field=value` / `field!=value` form, value escaped.
fn term_text(t: &FieldTerm) -> String {
    let op = if t.negated { "!=" } else { "=" };
    format!("{}{}{}", t.field, op, escape_field_value(&t.value))
}

/// The text a dotted path points at: `""` when missing or null, JSON text for non-strings.
fn field_text(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits on commas that are not escaped; the escapes stay in the terms.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(s.get(start..i).unwrap_or(""));
            start = i + 1;
        }
    }
    terms.push(s.get(start..).unwrap_or(""));
    terms
}

/// Splits a term at its first operator; `!=` and `==` win over `=` at the same position.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = term.get(i..).unwrap_or("");
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((term.get(..i).unwrap_or(""), op, rhs));
            }
        }
    }
    None
}

fn unescape_field_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => return Err(SelectorError::InvalidEscape(format!("\\{other}"))),
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(SelectorError::UnescapedCharacter(c)),
            other => out.push(other),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidEscape("\\".to_string()));
    }
    Ok(out)
}

fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(x) => x,
            Err(e) => panic!("{s:?} did not parse: {e}"),
        }
    }

    #[test]
    fn empty_string_selects_everything() {
        let s = sel("");
        assert!(s.is_empty());
        assert!(s.matches(None));
        assert!(s.matches(Some(&labels(json!({"a": "b"})))));
        assert_eq!(s.to_string(), "");
        assert!(sel("  \t ").is_empty());
    }

    #[test]
    fn equality_operators_match_as_kube_does() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        assert!(sel("app=web").matches(Some(&l)));
        assert!(sel("app==web").matches(Some(&l)));
        assert!(!sel("app=db").matches(Some(&l)));
        assert!(sel("app!=db").matches(Some(&l)));
        assert!(!sel("app!=web").matches(Some(&l)));
        assert!(
            sel("missing!=x").matches(Some(&l)),
            "!= holds for absent keys"
        );
        assert!(!sel("missing=x").matches(Some(&l)));
        assert!(sel("app=web,tier=front").matches(Some(&l)));
        assert!(!sel("app=web,tier=back").matches(Some(&l)));
    }

    #[test]
    fn set_operators_match_as_kube_does() {
        let l = labels(json!({"env": "prod"}));
        assert!(sel("env in (prod,staging)").matches(Some(&l)));
        assert!(!sel("env in (dev)").matches(Some(&l)));
        assert!(sel("env notin (dev)").matches(Some(&l)));
        assert!(!sel("env notin (prod)").matches(Some(&l)));
        assert!(sel("other notin (prod)").matches(Some(&l)));
        assert!(!sel("other in (prod)").matches(Some(&l)));
        assert!(sel("env").matches(Some(&l)));
        assert!(!sel("other").matches(Some(&l)));
        assert!(sel("!other").matches(Some(&l)));
        assert!(!sel("!env").matches(Some(&l)));
        assert!(sel("!env").matches(None));
        assert!(!sel("env").matches(None));
    }

    #[test]
    fn integer_comparisons_match() {
        let l = labels(json!({"n": "5", "s": "x"}));
        assert!(sel("n>4").matches(Some(&l)));
        assert!(!sel("n>5").matches(Some(&l)));
        assert!(sel("n<6").matches(Some(&l)));
        assert!(!sel("s<6").matches(Some(&l)));
        assert!(!sel("m<6").matches(Some(&l)));
    }

    #[test]
    fn whitespace_is_tolerated_everywhere() {
        let a = sel(" a = b , c  in ( x , y ) ,  ! d ,e != f ");
        assert_eq!(a, sel("a=b,c in (x,y),!d,e!=f"));
        assert_eq!(a.to_string(), "a=b,c in (x,y),!d,e!=f");
    }

    #[test]
    fn display_is_sorted_by_key_with_sorted_values() {
        let s = sel("tier in (b,a,b),app=web,!z,y");
        assert_eq!(s.to_string(), "app=web,tier in (a,b),y,!z");
        assert_eq!(sel("a==b").to_string(), "a==b");
        assert_eq!(sel("a notin (x)").to_string(), "a notin (x)");
        assert_eq!(sel("a>3,b<4").to_string(), "a>3,b<4");
    }

    #[test]
    fn empty_values_are_allowed() {
        let s = sel("a=,b in (),c in (,x)");
        assert_eq!(s.to_string(), "a=,b in (),c in (,x)");
        assert!(s.matches(Some(&labels(json!({"a": "", "b": "", "c": "x"})))));
    }

    #[test]
    fn keywords_are_values_inside_parentheses() {
        let s = sel("x in (in,notin)");
        assert!(s.matches(Some(&labels(json!({"x": "notin"})))));
    }

    #[test]
    fn prefixed_keys_parse() {
        let s = sel("app.kubernetes.io/name=web");
        assert!(s.matches(Some(&labels(json!({"app.kubernetes.io/name": "web"})))));
    }

    #[test]
    fn syntax_errors_read_like_kube() {
        let err = |s: &str| match LabelSelector::parse(s) {
            Err(e) => e.to_string(),
            Ok(x) => panic!("{s:?} parsed as {x}"),
        };
        assert_eq!(err("a,"), "found '', expected: identifier after ','");
        assert_eq!(
            err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("a in x"),
            "unable to parse requirement: found 'x' expected: '('"
        );
        assert_eq!(
            err("a in (x"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a=!b"),
            "unable to parse requirement: found '!', expected: identifier"
        );
        assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(
            err("a>x"),
            "unable to parse requirement: invalid values for key \"a\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
    }

    #[test]
    fn invalid_keys_and_values_are_rejected() {
        let e = LabelSelector::parse("-a=b").unwrap_err();
        let SelectorError::Requirement(inner) = &e else {
            panic!("{e:?}")
        };
        assert!(matches!(**inner, SelectorError::InvalidLabelKey { .. }));
        assert!(e.to_string().starts_with(
            "unable to parse requirement: invalid label key \"-a\": name part must consist of alphanumeric characters"
        ));
        let e = LabelSelector::parse("a=b$").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "unable to parse requirement: invalid label value \"b$\" for key \"a\""
            )
        );
        let long = "x".repeat(64);
        assert!(LabelSelector::parse(&format!("a={long}")).is_err());
        assert!(LabelSelector::parse(&format!("{long}=a")).is_err());
    }

    #[test]
    fn label_key_validation_gives_kube_messages() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("node-role.kubernetes.io/control-plane").is_ok());
        assert!(validate_label_key("A_b.c-D").is_ok());
        assert_eq!(
            validate_label_key("-a"),
            Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string())
        );
        assert_eq!(
            validate_label_key(""),
            Err("name part must be non-empty; name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string())
        );
        let e = validate_label_key("Example.com/a").unwrap_err();
        assert!(
            e.starts_with("prefix part a lowercase RFC 1123 subdomain"),
            "{e}"
        );
        assert!(
            validate_label_key("/a")
                .unwrap_err()
                .starts_with("prefix part must be non-empty")
        );
        assert!(
            validate_label_key("a/b/c")
                .unwrap_err()
                .starts_with("a qualified name must consist")
        );
        assert!(validate_label_key(&"a".repeat(63)).is_ok());
        assert_eq!(
            validate_label_key(&"a".repeat(64)),
            Err("name part must be no more than 63 characters".to_string())
        );
    }

    #[test]
    fn label_value_validation_gives_kube_messages() {
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1.2_3-x").is_ok());
        assert!(validate_label_value(&"a".repeat(63)).is_ok());
        assert_eq!(
            validate_label_value(&"a".repeat(64)),
            Err("must be no more than 63 characters".to_string())
        );
        assert_eq!(
            validate_label_value("a b"),
            Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string())
        );
        assert!(validate_label_value("-a").is_err());
        assert!(validate_label_value("a.").is_err());
    }

    #[test]
    fn json_selectors_convert_like_label_selector_as_selector() {
        let s = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists", "values": []}
            ]
        }))
        .unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,!canary,env notin (dev),team,tier in (a,b)"
        );
        assert!(s.matches(Some(&labels(
            json!({"app": "web", "tier": "a", "team": "x"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "c", "team": "x"})
        ))));
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn json_selector_edge_cases() {
        let nothing = LabelSelector::from_json(&Value::Null).unwrap();
        assert!(!nothing.matches(None));
        assert!(!nothing.is_empty());
        let everything = LabelSelector::from_json(&json!({})).unwrap();
        assert!(everything.is_empty());
        assert!(everything.matches(None));
        assert_eq!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
            ),
            Err(SelectorError::InvalidOperator("Gt".to_string()))
        );
        assert_eq!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]})
            )
            .unwrap_err()
            .to_string(),
            "\"Foo\" is not a valid label selector operator"
        );
        assert!(matches!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
            ),
            Err(SelectorError::InvalidValues { .. })
        ));
        assert!(matches!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            Err(SelectorError::InvalidValues { .. })
        ));
        assert!(matches!(
            LabelSelector::from_json(&json!({"matchLabels": {"a": "b c"}})),
            Err(SelectorError::InvalidLabelValue { .. })
        ));
        assert!(matches!(
            LabelSelector::from_json(&json!({"matchLabels": {"-a": "b"}})),
            Err(SelectorError::InvalidLabelKey { .. })
        ));
        assert!(matches!(
            LabelSelector::from_json(&json!({"matchLabels": {"a": 1}})),
            Err(SelectorError::InvalidJson(_))
        ));
        assert!(matches!(
            LabelSelector::from_json(&json!("a=b")),
            Err(SelectorError::InvalidJson(_))
        ));
    }

    #[test]
    fn plain_label_maps_and_exact_matches() {
        let s = LabelSelector::from_labels(&labels(json!({"b": "2", "a": "1"})));
        assert_eq!(s.to_string(), "a=1,b=2");
        assert_eq!(s.requires_exact_match("a"), Some("1"));
        assert_eq!(sel("a in (x)").requires_exact_match("a"), Some("x"));
        assert_eq!(sel("a in (x,y)").requires_exact_match("a"), None);
        assert_eq!(sel("a!=x").requires_exact_match("a"), None);
        assert!(LabelSelector::from_labels(&Map::new()).is_empty());
    }

    #[test]
    fn field_selectors_parse_and_match() {
        let f =
            FieldSelector::parse("spec.nodeName==n1,status.phase!=Failed,metadata.name=x").unwrap();
        assert_eq!(
            f.to_string(),
            "metadata.name=x,spec.nodeName=n1,status.phase!=Failed"
        );
        let pod = json!({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(f.matches(&pod));
        let failed = json!({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Failed"}});
        assert!(!f.matches(&failed));
        assert_eq!(f.single_name(), None);
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse("").unwrap().matches(&pod));
    }

    #[test]
    fn field_selector_missing_and_non_string_fields() {
        let obj = json!({"spec": {"hostNetwork": true, "replicas": 3, "x": null}});
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("spec.x=").unwrap().matches(&obj));
        assert!(
            !FieldSelector::parse("spec.nodeName=a")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.nodeName!=a")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=true")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.replicas=3")
                .unwrap()
                .matches(&obj)
        );
    }

    #[test]
    fn field_selector_escapes() {
        let f = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(f.single_name(), Some(r"a,b=c\d"));
        assert_eq!(f.to_string(), r"metadata.name=a\,b\=c\\d");
        assert_eq!(
            FieldSelector::parse(r"a=b\x"),
            Err(SelectorError::InvalidEscape(r"\x".to_string()))
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c"),
            Err(SelectorError::UnescapedCharacter('='))
        );
        assert_eq!(
            FieldSelector::parse("a,b=c").unwrap_err().to_string(),
            "invalid selector: 'a,b=c'; can't understand 'a'"
        );
    }

    #[test]
    fn field_selector_single_name() {
        assert_eq!(
            FieldSelector::parse("metadata.name=web")
                .unwrap()
                .single_name(),
            Some("web")
        );
        assert_eq!(
            FieldSelector::parse("metadata.name==web")
                .unwrap()
                .single_name(),
            Some("web")
        );
        assert_eq!(
            FieldSelector::parse("metadata.name!=web")
                .unwrap()
                .single_name(),
            None
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=web,spec.nodeName=n")
                .unwrap()
                .single_name(),
            None
        );
    }

    #[test]
    fn field_selector_supported_fields() {
        let f = FieldSelector::parse("spec.nodeName=n,metadata.namespace=d").unwrap();
        assert!(f.check_supported(&["spec.nodeName"]).is_ok());
        let f = FieldSelector::parse("spec.foo=x").unwrap();
        assert_eq!(
            f.check_supported(&["spec.nodeName"])
                .unwrap_err()
                .to_string(),
            "field label not supported: spec.foo"
        );
    }

    // ----- property tests -----

    #[derive(Debug, Clone)]
    enum ModelOp {
        Eq(String),
        DoubleEq(String),
        Ne(String),
        In(Vec<String>),
        NotIn(Vec<String>),
        Exists,
        NotExists,
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "app", "tier", "x.y", "k-8"])
                .prop_map(String::from),
            prop::sample::select(vec!["example.com/a", "k8s.io/b"]).prop_map(String::from),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "v", "w", "web", "a.b", "1-2", "X_y"]).prop_map(String::from)
    }

    fn req_strategy() -> impl Strategy<Value = (String, ModelOp)> {
        let vals = || prop::collection::vec(value_strategy(), 1..4);
        let op = prop_oneof![
            value_strategy().prop_map(ModelOp::Eq),
            value_strategy().prop_map(ModelOp::DoubleEq),
            value_strategy().prop_map(ModelOp::Ne),
            vals().prop_map(ModelOp::In),
            vals().prop_map(ModelOp::NotIn),
            Just(ModelOp::Exists),
            Just(ModelOp::NotExists),
        ];
        (key_strategy(), op)
    }

    fn render(reqs: &[(String, ModelOp)], spaces: bool) -> String {
        let sp = if spaces { " " } else { "" };
        reqs.iter()
            .map(|(k, op)| match op {
                ModelOp::Eq(v) => format!("{k}{sp}={sp}{v}"),
                ModelOp::DoubleEq(v) => format!("{k}{sp}=={sp}{v}"),
                ModelOp::Ne(v) => format!("{k}{sp}!={sp}{v}"),
                ModelOp::In(vs) => format!("{k} in{sp}({})", vs.join(",")),
                ModelOp::NotIn(vs) => format!("{k} notin{sp}({sp}{}{sp})", vs.join(",")),
                ModelOp::Exists => format!("{sp}{k}"),
                ModelOp::NotExists => format!("!{sp}{k}"),
            })
            .collect::<Vec<_>>()
            .join(&format!("{sp},{sp}"))
    }

    fn model_matches(
        reqs: &[(String, ModelOp)],
        l: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        reqs.iter().all(|(k, op)| {
            let v = l.get(k);
            match op {
                ModelOp::Eq(x) | ModelOp::DoubleEq(x) => v == Some(x),
                ModelOp::Ne(x) => v != Some(x),
                ModelOp::In(xs) => v.is_some_and(|v| xs.contains(v)),
                ModelOp::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                ModelOp::Exists => v.is_some(),
                ModelOp::NotExists => v.is_none(),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn display_then_parse_round_trips(reqs in prop::collection::vec(req_strategy(), 0..5), spaces in any::<bool>()) {
            let text = render(&reqs, spaces);
            let parsed = LabelSelector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            let shown = parsed.to_string();
            let again = LabelSelector::parse(&shown).map_err(|e| TestCaseError::fail(format!("{shown:?}: {e}")))?;
            prop_assert_eq!(&again, &parsed);
            prop_assert_eq!(again.to_string(), shown);
        }

        #[test]
        fn matches_agrees_with_a_model(
            reqs in prop::collection::vec(req_strategy(), 0..5),
            l in prop::collection::btree_map(key_strategy(), value_strategy(), 0..5),
        ) {
            let text = render(&reqs, false);
            let parsed = LabelSelector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            let map: Map<String, Value> = l.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            prop_assert_eq!(parsed.matches(Some(&map)), model_matches(&reqs, &l));
            if l.is_empty() {
                prop_assert_eq!(parsed.matches(None), model_matches(&reqs, &l));
            }
        }

        #[test]
        fn label_parse_never_panics_on_arbitrary_strings(s in any::<String>()) {
            let _ = LabelSelector::parse(&s);
        }

        #[test]
        fn label_parse_never_panics_on_grammar_soup(s in "[a-c!=(), <>\\tinot/.\\x00-]{0,40}") {
            if let Ok(x) = LabelSelector::parse(&s) {
                let shown = x.to_string();
                prop_assert_eq!(LabelSelector::parse(&shown).ok(), Some(x));
            }
        }

        #[test]
        fn field_parse_never_panics_and_round_trips(s in "[a-c.!=,\\\\é]{0,30}") {
            if let Ok(f) = FieldSelector::parse(&s) {
                let shown = f.to_string();
                prop_assert_eq!(FieldSelector::parse(&shown).ok(), Some(f));
            }
        }
    }
}
