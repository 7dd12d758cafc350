//! CEL expressions and `${...}` templates.
//!
//! Bare CEL appears in `if`, `when`, `foreach` and `until`; templates are JSON
//! values whose strings may embed `${expr}`. A string that is exactly one
//! `${expr}` yields the expression's typed value; otherwise each `${expr}` is
//! rendered as text. Evaluation is pure: the standard CEL library here has no
//! clock or randomness, and JSON numbers become CEL `int` when integral so that
//! `x + 1` works on document values.

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The CEL standard library, built once: building it is far costlier than
/// most evaluations.
fn stdlib() -> Arc<cel::Env> {
    static ENV: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib())).clone()
}

/// A compiled CEL expression with its source.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<Program>,
    /// Names it reads: only those bindings are converted to CEL values (a
    /// big `input` costs nothing to an expression that does not read it).
    reads: Arc<[String]>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Variables visible to an expression.
pub trait Scope {
    /// Calls `f` with every visible binding; later bindings shadow earlier ones.
    fn visit(&self, f: &mut dyn FnMut(&str, &Json));
}

impl<const N: usize> Scope for [(&str, &Json); N] {
    fn visit(&self, f: &mut dyn FnMut(&str, &Json)) {
        for (name, value) in self {
            f(name, value);
        }
    }
}

impl Expr {
    /// Compiles `source`, returning the parser's message on error.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| first_line(&e.to_string()))?;
        let reads = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            reads,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against `scope`, converting the result to JSON.
    pub fn eval(&self, scope: &dyn Scope) -> Result<Json, String> {
        let mut ctx = Context::with_env(stdlib());
        scope.visit(&mut |name, value| {
            if self.reads.iter().any(|r| r == name) {
                ctx.add_variable_from_value(name, json_to_cel(value));
            }
        });
        let value = self.program.execute(&ctx).map_err(|e| e.to_string())?;
        cel_to_json(&value)
    }

    /// Evaluates and requires a boolean.
    pub fn eval_bool(&self, scope: &dyn Scope) -> Result<bool, String> {
        match self.eval(scope)? {
            Json::Bool(b) => Ok(b),
            other => Err(format!("expected a boolean, got {}", type_name(&other))),
        }
    }
}

/// A JSON value whose strings may contain `${...}` expressions.
#[derive(Debug, Clone)]
pub enum Template {
    /// No expressions inside.
    Literal(Json),
    /// A whole string that is one expression: yields its typed value.
    Expr(Expr),
    /// A string with text and expressions: yields a string.
    Text(Vec<Part>),
    /// An array with templates inside.
    Array(Vec<Template>),
    /// An object with templates inside.
    Object(Vec<(String, Template)>),
}

/// A piece of a [`Template::Text`].
#[derive(Debug, Clone)]
pub enum Part {
    /// Plain text.
    Text(String),
    /// An embedded expression, rendered as text.
    Expr(Expr),
}

impl Template {
    /// Builds a template from a JSON value, collecting `(json path suffix, message)`
    /// for every expression that does not compile.
    pub fn parse(value: &Json) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let t = Self::parse_into(value, String::new(), &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    fn parse_into(value: &Json, path: String, errors: &mut Vec<(String, String)>) -> Self {
        match value {
            Json::String(s) => match parse_text(s) {
                Ok(t) => t,
                Err(msg) => {
                    errors.push((path, msg));
                    Self::Literal(Json::Null)
                }
            },
            Json::Array(items) => {
                let parts: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::parse_into(v, format!("{path}[{i}]"), errors))
                    .collect();
                if parts.iter().all(|p| matches!(p, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Array(parts)
                }
            }
            Json::Object(map) => {
                let parts: Vec<_> = map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Self::parse_into(v, format!("{path}.{k}"), errors),
                        )
                    })
                    .collect();
                if parts.iter().all(|(_, p)| matches!(p, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Object(parts)
                }
            }
            other => Self::Literal(other.clone()),
        }
    }

    /// Renders the template against `scope`.
    pub fn render(&self, scope: &dyn Scope) -> Result<Json, String> {
        Ok(match self {
            Self::Literal(v) => v.clone(),
            Self::Expr(e) => e.eval(scope).map_err(|m| format!("{}: {m}", e.source()))?,
            Self::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => {
                            match e.eval(scope).map_err(|m| format!("{}: {m}", e.source()))? {
                                Json::String(s) => out.push_str(&s),
                                other => out.push_str(&other.to_string()),
                            }
                        }
                    }
                }
                Json::String(out)
            }
            Self::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|t| t.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Splits a string into text and `${...}` parts. `$${` escapes a literal `${`.
fn parse_text(s: &str) -> Result<Template, String> {
    if !s.contains("${") {
        return Ok(Template::Literal(Json::String(s.to_owned())));
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            text.push_str(&rest[..start - 1]);
            text.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        text.push_str(&rest[..start]);
        let body = &rest[start + 2..];
        let end = closing_brace(body).ok_or_else(|| "unclosed ${ in template".to_owned())?;
        let source = body[..end].trim();
        if source.is_empty() {
            return Err("empty ${} in template".to_owned());
        }
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(Part::Expr(
            Expr::compile(source).map_err(|m| format!("invalid expression: {m}"))?,
        ));
        rest = &body[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(match parts.as_slice() {
        [Part::Expr(e)] => Template::Expr(e.clone()),
        _ if parts.iter().all(|p| matches!(p, Part::Text(_))) => {
            let joined: String = parts
                .iter()
                .map(|p| {
                    if let Part::Text(t) = p {
                        t.as_str()
                    } else {
                        ""
                    }
                })
                .collect();
            Template::Literal(Json::String(joined))
        }
        _ => Template::Text(parts),
    })
}

/// Index of the `}` closing an expression body, skipping braces inside
/// nested maps and string literals.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    line.trim_start_matches("ERROR: ")
        .trim_start_matches("<input>:")
        .to_owned()
}

/// JSON to CEL: integral numbers become `int` (or `uint` past i64), others `double`.
pub fn json_to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(map) => {
            let entries: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map {
                map: Arc::new(entries),
            })
        }
    }
}

/// CEL to JSON. Functions and opaque values have no JSON form.
pub fn cel_to_json(value: &Value) -> Result<Json, String> {
    value
        .json()
        .map_err(|e| format!("result has no JSON form: {e}"))
}

/// The JSON type name of a value, for messages.
pub fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "list",
        Json::Object(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render<const N: usize>(template: Json, scope: &[(&str, &Json); N]) -> Result<Json, String> {
        Template::parse(&template)
            .map_err(|e| format!("{e:?}"))?
            .render(scope)
    }

    #[test]
    fn whole_expression_keeps_its_type() {
        let input = json!({"amount": 12, "lines": [1, 2]});
        let scope = [("input", &input)];
        assert_eq!(
            render(json!("${input.amount + 1}"), &scope).unwrap(),
            json!(13)
        );
        assert_eq!(
            render(json!("${input.lines}"), &scope).unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            render(json!("${ {'a': input.amount} }"), &scope).unwrap(),
            json!({"a": 12})
        );
    }

    #[test]
    fn embedded_expressions_render_as_text() {
        let input = json!({"id": "o-1", "n": 3});
        let scope = [("input", &input)];
        assert_eq!(
            render(json!("order ${input.id} x${input.n}"), &scope).unwrap(),
            json!("order o-1 x3")
        );
        assert_eq!(
            render(json!("cost $${not} ${input.n}"), &scope).unwrap(),
            json!("cost ${not} 3")
        );
        assert_eq!(
            render(
                json!({"a": ["${input.id}", 1], "b": "plain"}),
                &[("input", &input)]
            )
            .unwrap(),
            json!({"a": ["o-1", 1], "b": "plain"})
        );
    }

    #[test]
    fn bad_templates_are_reported_with_their_place() {
        let errors =
            Template::parse(&json!({"a": ["ok", "${input.}"], "b": "${oops"})).unwrap_err();
        let places: Vec<_> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(places, [".a[1]", ".b"]);
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        let input = json!({});
        let e = Expr::compile("input.missing.deeper").unwrap();
        assert!(e.eval(&[("input", &input)]).is_err());
        let e = Expr::compile("1 == 1").unwrap();
        assert!(e.eval_bool(&[]).unwrap());
        assert!(Expr::compile("'x'").unwrap().eval_bool(&[]).is_err());
    }
}
