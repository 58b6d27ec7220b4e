//! Outbound templates: a partner's native document with `{{ … }}` placeholders.
//!
//! This module owns the template language: placeholders (`{{ data.holder.family_name | upper }}`),
//! filters, `tpl:if` and `tpl:each` on XML elements, `{"$each": …, "$item": …}` in JSON, the
//! lint of every placeholder against the canonical schema and the need-to-know policy, and the
//! rendering of a canonical event into bytes. Values are escaped by construction: a template
//! cannot produce malformed XML or JSON whatever the event holds.

use super::codelist::CodeList;
use super::dates::{DatePattern, leading_iso_date};
use super::diagnostics::Issue;
use super::path::{JsonPath, is_absent};
use super::rule::as_text;
use crate::canonical::schema::{FieldShape, ObjectShape};
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The attribute prefix of template directives in XML templates.
const DIRECTIVE: &str = "tpl:";

/// What a placeholder reads: the event, or the current item of a `tpl:each`.
#[derive(Debug, Clone)]
enum Root {
    Event,
    Item,
}

#[derive(Debug, Clone)]
enum Filter {
    Join(String),
    Date(DatePattern),
    Lookup(String, Arc<CodeList>),
    Reverse(String, Arc<CodeList>),
    Upper,
    Lower,
    First,
    Default(String),
}

/// A compiled placeholder.
#[derive(Debug, Clone)]
struct Expr {
    root: Root,
    path: JsonPath,
    text: String,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Expr(Expr),
}

#[derive(Debug, Clone)]
struct Text(Vec<Part>);

#[derive(Debug, Clone)]
struct XmlNode {
    name: String,
    attributes: Vec<(String, Text)>,
    condition: Option<Expr>,
    each: Option<Expr>,
    children: Vec<XmlChild>,
}

#[derive(Debug, Clone)]
enum XmlChild {
    Element(Box<XmlNode>),
    Text(Text),
}

#[derive(Debug, Clone)]
enum JsonNode {
    Literal(Value),
    Expr(Expr),
    Text(Text),
    Array(Vec<JsonNode>),
    Object(Vec<(String, JsonNode)>),
    Each(Expr, Box<JsonNode>),
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template(Body);

#[derive(Debug, Clone)]
enum Body {
    Xml(XmlNode),
    Json(JsonNode),
}

/// Why a rendering failed: a value the template needs cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{placeholder}: {message}")]
pub struct RenderError {
    /// The placeholder as written.
    pub placeholder: String,
    /// What went wrong.
    pub message: String,
}

/// What a template may refer to while it is compiled.
pub struct TemplateScope<'a> {
    /// The envelope's fields.
    pub envelope: &'a ObjectShape,
    /// The data fields of the event type.
    pub data: &'a ObjectShape,
    /// Code lists, by name.
    pub codelists: &'a HashMap<String, Arc<CodeList>>,
    /// Returns true when a data path is withheld from the recipient's role.
    pub withheld: &'a dyn Fn(&str) -> bool,
}

/// The item shape in scope inside a `tpl:each`.
type ItemShape<'a> = Option<&'a FieldShape>;

impl Template {
    /// Compiles a template: XML when it starts with `<`, JSON otherwise. A problem is located
    /// at `offset` (where the template's value starts in its file), or, when the file's text
    /// holds `source` verbatim from `verbatim_at` on (a literal string), near the problem
    /// inside it.
    pub fn compile(
        source: &str,
        offset: usize,
        verbatim_at: Option<usize>,
        scope: &TemplateScope<'_>,
    ) -> Result<Self, Vec<Issue>> {
        let issue = |message: String, inside: Option<usize>| {
            let at = match (verbatim_at, inside) {
                (Some(start), Some(inside)) => start + inside.min(source.len()),
                _ => offset,
            };
            vec![Issue::at(at..at + 1, message)]
        };
        if source.trim_start().starts_with('<') {
            compile_xml(source, scope)
                .map(|root| Template(Body::Xml(root)))
                .map_err(|(message, at)| issue(message, Some(at)))
        } else {
            let value: Value = serde_json::from_str(source).map_err(|error| {
                let at = byte_of_line(source, error.line()) + error.column().saturating_sub(1);
                issue(format!("the JSON template is not JSON: {error}"), Some(at))
            })?;
            compile_json(&value, scope, None)
                .map(|root| Template(Body::Json(root)))
                .map_err(|message| {
                    let at = placeholder_in(source, &message);
                    issue(message, at)
                })
        }
    }

    /// The media type the template produces.
    pub fn content_type(&self) -> &'static str {
        match self.0 {
            Body::Xml(_) => "application/xml",
            Body::Json(_) => "application/json",
        }
    }

    /// Renders an event (already filtered by the need-to-know policy) into bytes.
    pub fn render(&self, event: &Value) -> Result<Vec<u8>, RenderError> {
        match &self.0 {
            Body::Xml(root) => {
                let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
                let rendered = render_xml(root, event, &Value::Null, &mut out, 0)?;
                if !rendered {
                    return Err(RenderError {
                        placeholder: root.name.clone(),
                        message: "the root element has no value".into(),
                    });
                }
                Ok(out.into_bytes())
            }
            Body::Json(root) => {
                let value = render_json(root, event, &Value::Null)?.unwrap_or(Value::Null);
                Ok(crate::canonical::jcs::to_vec(&value))
            }
        }
    }
}

fn compile_expr(
    text: &str,
    scope: &TemplateScope<'_>,
    item: ItemShape<'_>,
) -> Result<Expr, String> {
    let mut pieces = split_filters(text).into_iter();
    let path_text = pieces.next().unwrap_or_default();
    let (root, rest) = match path_text.split_once('.') {
        Some(("item", rest)) => (Root::Item, rest),
        None if path_text == "item" => (Root::Item, "."),
        _ => (Root::Event, path_text.as_str()),
    };
    match root {
        Root::Item => match item {
            None => {
                return Err(format!(
                    "{{{{ {text} }}}}: `item` is only defined inside tpl:each / $each"
                ));
            }
            Some(FieldShape::Object(object)) if rest != "." && object.find(rest).is_none() => {
                return Err(format!(
                    "{{{{ {text} }}}}: {rest} is not a field of the items"
                ));
            }
            _ => {}
        },
        Root::Event => {
            if let Some(data_path) = rest.strip_prefix("data.") {
                if scope.data.find(data_path).is_none() {
                    return Err(format!(
                        "{{{{ {text} }}}}: {data_path} is not a field of the event's data"
                    ));
                }
                if (scope.withheld)(data_path) {
                    return Err(format!(
                        "{{{{ {text} }}}}: {data_path} is withheld from this recipient's role"
                    ));
                }
            } else if scope.envelope.find(rest).is_none() || rest == "data" {
                return Err(format!(
                    "{{{{ {text} }}}}: {rest} is not an event attribute"
                ));
            }
        }
    }
    let path = JsonPath::compile(rest, '.').map_err(|error| error.to_string())?;
    let mut filters = Vec::new();
    for piece in pieces {
        let (name, argument) = match piece.split_once('(') {
            Some((name, rest)) => {
                let argument = rest
                    .strip_suffix(')')
                    .map(str::trim)
                    .and_then(|a| {
                        let quote = a.chars().next().filter(|q| *q == '"' || *q == '\'')?;
                        a.strip_prefix(quote)?.strip_suffix(quote)
                    })
                    .ok_or_else(|| {
                        format!("{{{{ {text} }}}}: filter {piece} takes one quoted argument")
                    })?;
                (name.trim(), Some(argument.to_owned()))
            }
            None => (piece.trim(), None),
        };
        let list = |argument: &Option<String>| -> Result<(String, Arc<CodeList>), String> {
            let name = argument.clone().unwrap_or_default();
            let list = scope
                .codelists
                .get(&name)
                .ok_or_else(|| format!("{{{{ {text} }}}}: code list {name:?} is not defined"))?;
            Ok((name, list.clone()))
        };
        filters.push(match (name, &argument) {
            ("join", Some(separator)) => Filter::Join(separator.clone()),
            ("date", Some(pattern)) => Filter::Date(
                DatePattern::compile(pattern).map_err(|e| format!("{{{{ {text} }}}}: {e}"))?,
            ),
            ("lookup", Some(_)) => {
                let (name, list) = list(&argument)?;
                Filter::Lookup(name, list)
            }
            ("reverse", Some(_)) => {
                let (name, list) = list(&argument)?;
                Filter::Reverse(name, list)
            }
            ("default", Some(value)) => Filter::Default(value.clone()),
            ("upper", None) => Filter::Upper,
            ("lower", None) => Filter::Lower,
            ("first", None) => Filter::First,
            _ => return Err(format!("{{{{ {text} }}}}: unknown filter {piece}")),
        });
    }
    Ok(Expr {
        root,
        path,
        text: text.to_owned(),
        filters,
    })
}

/// Splits `a | f("x|y") | g('z')` on the bars outside quotes.
fn split_filters(text: &str) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut quote: Option<char> = None;
    for character in text.chars() {
        match (character, quote) {
            ('"' | '\'', None) => quote = Some(character),
            (c, Some(open)) if c == open => quote = None,
            ('|', None) => {
                pieces.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(piece) = pieces.last_mut() {
            piece.push(character);
        }
    }
    pieces.into_iter().map(|p| p.trim().to_owned()).collect()
}

/// Compiles text with placeholders. With `alone_keeps_type` (JSON), a text that is one
/// placeholder alone stands for the value itself, which may be an object.
fn compile_text(
    text: &str,
    scope: &TemplateScope<'_>,
    item: ItemShape<'_>,
    alone_keeps_type: bool,
) -> Result<Text, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Literal(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
        let expr = compile_expr(after[..end].trim(), scope, item)?;
        let alone = start == 0 && after[end + 2..].is_empty() && parts.is_empty();
        if expr.filters.is_empty()
            && !(alone && alone_keeps_type)
            && let Some(FieldShape::Object(_)) = shape_of(&expr, scope, item)
        {
            // An object has no text: it would be written as nothing.
            return Err(format!(
                "{{{{ {} }}}}: this is an object, which has no text: name one of its fields",
                expr.text
            ));
        }
        parts.push(Part::Expr(expr));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    // A placeholder mistyped (`{ { data.case_id }}`) would be written out as it stands. Other
    // braces are the template's own text (JSON written inside XML, say).
    if parts
        .iter()
        .any(|part| matches!(part, Part::Literal(literal) if has_split_braces(literal)))
    {
        return Err(format!(
            "{text:?} has a {{ {{ with a space between: a placeholder is written {{{{ path }}}}"
        ));
    }
    Ok(Text(parts))
}

/// Whether `text` holds `{` and `{` with only white space between them: a placeholder's
/// opening split by mistake, which no JSON or XML text holds.
fn has_split_braces(text: &str) -> bool {
    text.split('{')
        .skip(1)
        .zip(text.split('{').skip(2))
        .any(|(between, _)| !between.is_empty() && between.trim().is_empty())
}

/// The shape of what an expression names, when the schema says.
fn shape_of<'s>(
    expr: &Expr,
    scope: &'s TemplateScope<'_>,
    item: ItemShape<'s>,
) -> Option<&'s FieldShape> {
    let dotted = expr.text.split('|').next().unwrap_or_default().trim();
    match (
        dotted.strip_prefix("data."),
        dotted.strip_prefix("item."),
        item,
    ) {
        (Some(path), _, _) => scope.data.find(path),
        (None, Some(path), Some(FieldShape::Object(object))) => object.find(path),
        (None, None, item) if dotted == "item" => item,
        _ => None,
    }
}

fn item_shape_of<'s>(
    expr: &Expr,
    scope: &'s TemplateScope<'_>,
    item: ItemShape<'s>,
) -> Result<&'s FieldShape, String> {
    match shape_of(expr, scope, item) {
        Some(FieldShape::List(item)) => Ok(item),
        _ => Err(format!(
            "{} is not a list, so it cannot be repeated",
            expr.text.split('|').next().unwrap_or_default().trim()
        )),
    }
}

/// Where in `source` the placeholder that `message` begins with is written (`{{ data.x }}: …`),
/// when it begins with one: the JSON value a problem is found in is parsed, no longer text.
fn placeholder_in(source: &str, message: &str) -> Option<usize> {
    let end = message.find("}}")? + 2;
    let placeholder = message.get(..end).filter(|p| p.starts_with("{{"))?;
    source.find(placeholder)
}

/// The byte at which 1-based `line` of `text` starts (its end when it has fewer lines).
fn byte_of_line(text: &str, line: usize) -> usize {
    text.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// Compiles an XML template; a problem comes with the byte of `source` where the reader had
/// got to (the end of the element or text at fault, or where the XML broke).
fn compile_xml(source: &str, scope: &TemplateScope<'_>) -> Result<XmlNode, (String, usize)> {
    let mut reader = Reader::from_str(source);
    let compiled = compile_xml_events(&mut reader, scope);
    compiled.map_err(|message| {
        let at = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        (message, at)
    })
}

fn compile_xml_events(
    reader: &mut Reader<&[u8]>,
    scope: &TemplateScope<'_>,
) -> Result<XmlNode, String> {
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<(XmlNode, Option<&FieldShape>)> = Vec::new();
    let mut root = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|error| format!("the XML template is malformed: {error}"))?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let outer_item = stack.last().and_then(|(_, item)| *item);
                let mut node = XmlNode {
                    name: start.name().0.to_owned(),
                    attributes: Vec::new(),
                    condition: None,
                    each: None,
                    children: Vec::new(),
                };
                let mut item = outer_item;
                for attribute in start.attributes() {
                    let attribute = attribute
                        .map_err(|error| format!("the XML template is malformed: {error}"))?;
                    let key = attribute.key.0;
                    let value = attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|error| error.to_string())?;
                    match key.strip_prefix(DIRECTIVE) {
                        Some("if") => {
                            node.condition = Some(compile_expr(value.trim(), scope, outer_item)?)
                        }
                        Some("each") => {
                            let expr = compile_expr(value.trim(), scope, outer_item)?;
                            item = Some(item_shape_of(&expr, scope, outer_item)?);
                            node.each = Some(expr);
                        }
                        Some(other) => {
                            return Err(format!("unknown template directive tpl:{other}"));
                        }
                        None if key == "xmlns:tpl" => {}
                        None => node
                            .attributes
                            .push((key.to_owned(), compile_text(&value, scope, item, false)?)),
                    }
                }
                if matches!(event, Event::Start(_)) {
                    stack.push((node, item));
                } else {
                    attach(&mut stack, &mut root, node)?;
                }
            }
            Event::End(_) => {
                let (node, _) = stack
                    .pop()
                    .ok_or("unbalanced end tag in the XML template")?;
                attach(&mut stack, &mut root, node)?;
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                if !content.trim().is_empty() {
                    let (parent, item) = stack
                        .last_mut()
                        .ok_or("text outside the root element of the template")?;
                    parent.children.push(XmlChild::Text(compile_text(
                        content.trim(),
                        scope,
                        *item,
                        false,
                    )?));
                }
            }
            Event::GeneralRef(reference) => {
                let (parent, _) = stack
                    .last_mut()
                    .ok_or("text outside the root element of the template")?;
                let name = reference.xml10_content();
                let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                    .ok_or("undefined entity in the template")?;
                parent.children.push(XmlChild::Text(Text(vec![Part::Literal(
                    resolved.to_owned(),
                )])));
            }
            Event::CData(_) | Event::DocType(_) | Event::PI(_) => {
                return Err("templates take elements, attributes and text only".into());
            }
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    root.ok_or_else(|| "the XML template has no root element".into())
}

fn attach(
    stack: &mut [(XmlNode, Option<&FieldShape>)],
    root: &mut Option<XmlNode>,
    node: XmlNode,
) -> Result<(), String> {
    match stack.last_mut() {
        Some((parent, _)) => parent.children.push(XmlChild::Element(Box::new(node))),
        None if root.is_none() => *root = Some(node),
        None => return Err("the XML template has more than one root element".into()),
    }
    Ok(())
}

fn compile_json(
    value: &Value,
    scope: &TemplateScope<'_>,
    item: ItemShape<'_>,
) -> Result<JsonNode, String> {
    Ok(match value {
        Value::String(text) if text.contains("{{") || has_split_braces(text) => {
            let compiled = compile_text(text, scope, item, true)?;
            match compiled.0.as_slice() {
                [Part::Expr(expr)] => JsonNode::Expr(expr.clone()),
                _ => JsonNode::Text(compiled),
            }
        }
        Value::Array(items) => JsonNode::Array(
            items
                .iter()
                .map(|v| compile_json(v, scope, item))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) if map.contains_key("$each") => {
            let (Some(Value::String(path)), Some(template), 2) =
                (map.get("$each"), map.get("$item"), map.len())
            else {
                return Err(
                    "a {\"$each\": …} object takes exactly \"$each\" (a path) and \"$item\"".into(),
                );
            };
            let expr = compile_expr(path, scope, item)?;
            let inner = item_shape_of(&expr, scope, item)?;
            JsonNode::Each(expr, Box::new(compile_json(template, scope, Some(inner))?))
        }
        Value::Object(map) => JsonNode::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), compile_json(v, scope, item)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => JsonNode::Literal(other.clone()),
    })
}

impl Expr {
    /// Evaluates the placeholder: `None` when the value is absent.
    fn eval(&self, event: &Value, item: &Value) -> Result<Option<Value>, RenderError> {
        let root = match self.root {
            Root::Event => event,
            Root::Item => item,
        };
        let mut value = self.path.get(root).filter(|v| !is_absent(v)).cloned();
        let error = |message: String| RenderError {
            placeholder: self.text.clone(),
            message,
        };
        for filter in &self.filters {
            value = match (filter, value) {
                (Filter::Default(text), None) => Some(Value::String(text.clone())),
                (_, None) => None,
                (Filter::Join(separator), Some(Value::Array(items))) => Some(Value::String(
                    items
                        .iter()
                        .filter_map(as_text)
                        .collect::<Vec<_>>()
                        .join(separator),
                )),
                (Filter::First, Some(Value::Array(items))) => items.into_iter().next(),
                (Filter::Join(_) | Filter::First | Filter::Default(_), Some(other)) => Some(other),
                (Filter::Date(pattern), Some(value)) => {
                    let date = as_text(&value).and_then(|text| leading_iso_date(&text));
                    Some(Value::String(
                        pattern.write(date.ok_or_else(|| error("not an ISO date".into()))?),
                    ))
                }
                (Filter::Lookup(name, list), Some(value)) => {
                    let key = as_text(&value).unwrap_or_default();
                    let found = list.get(&key).ok_or_else(|| {
                        error(format!("{key:?} has no entry in code list {name}"))
                    })?;
                    Some(Value::String(found.to_owned()))
                }
                (Filter::Reverse(name, list), Some(value)) => {
                    let key = as_text(&value).unwrap_or_default();
                    let found = list.reverse(&key).ok_or_else(|| {
                        error(format!("{key:?} has no single code in code list {name}"))
                    })?;
                    Some(Value::String(found.to_owned()))
                }
                (Filter::Upper, Some(value)) => Some(map_text(value, str::to_uppercase)),
                (Filter::Lower, Some(value)) => Some(map_text(value, str::to_lowercase)),
            };
        }
        Ok(value.filter(|v| !is_absent(v)))
    }
}

fn map_text(value: Value, f: fn(&str) -> String) -> Value {
    match value {
        Value::String(text) => Value::String(f(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| map_text(v, f)).collect()),
        other => other,
    }
}

impl Text {
    /// Renders text; `Ok(None)` when it has placeholders and every one is absent.
    fn render(&self, event: &Value, item: &Value) -> Result<Option<String>, RenderError> {
        let mut out = String::new();
        let mut placeholders = 0;
        let mut present = 0;
        for part in &self.0 {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Expr(expr) => {
                    placeholders += 1;
                    if let Some(value) = expr.eval(event, item)? {
                        present += 1;
                        let text = match &value {
                            Value::Array(items) => items
                                .iter()
                                .filter_map(as_text)
                                .collect::<Vec<_>>()
                                .join(" "),
                            other => as_text(other).unwrap_or_default(),
                        };
                        out.push_str(&text);
                    }
                }
            }
        }
        Ok((placeholders == 0 || present > 0).then_some(out))
    }

    fn has_placeholders(&self) -> bool {
        self.0.iter().any(|part| matches!(part, Part::Expr(_)))
    }
}

fn truthy(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

/// Renders an element (and its repetitions); returns whether anything was written.
fn render_xml(
    node: &XmlNode,
    event: &Value,
    item: &Value,
    out: &mut String,
    depth: usize,
) -> Result<bool, RenderError> {
    if let Some(condition) = &node.condition
        && !truthy(&condition.eval(event, item)?)
    {
        return Ok(false);
    }
    match &node.each {
        Some(each) => {
            let items = match each.eval(event, item)? {
                Some(Value::Array(items)) => items,
                Some(single) => vec![single],
                None => Vec::new(),
            };
            let mut any = false;
            for each_item in &items {
                any |= render_one(node, event, each_item, out, depth)?;
            }
            Ok(any)
        }
        None => render_one(node, event, item, out, depth),
    }
}

fn render_one(
    node: &XmlNode,
    event: &Value,
    item: &Value,
    out: &mut String,
    depth: usize,
) -> Result<bool, RenderError> {
    // An element with placeholders of its own is left out when none of them has a value and
    // none of its child elements was written; an element without placeholders is always written.
    let (mut placeholders, mut present) = (0, 0);
    let mut attributes = String::new();
    for (name, text) in &node.attributes {
        let rendered = text.render(event, item)?;
        if text.has_placeholders() {
            placeholders += 1;
            present += usize::from(rendered.is_some());
        }
        if let Some(value) = rendered {
            attributes.push_str(&format!(
                " {name}=\"{}\"",
                quick_xml::escape::escape(value.as_str())
            ));
        }
    }
    let mut body = String::new();
    let mut has_children = false;
    for child in &node.children {
        match child {
            XmlChild::Text(text) => {
                let rendered = text.render(event, item)?;
                if text.has_placeholders() {
                    placeholders += 1;
                    present += usize::from(rendered.is_some());
                }
                if let Some(value) = rendered {
                    body.push_str(&quick_xml::escape::partial_escape(value.as_str()));
                }
            }
            XmlChild::Element(element) => {
                let mut inner = String::new();
                if render_xml(element, event, item, &mut inner, depth + 1)? {
                    has_children = true;
                    body.push_str(&inner);
                }
            }
        }
    }
    if placeholders > 0 && present == 0 && !has_children {
        return Ok(false);
    }
    let indent = "  ".repeat(depth);
    out.push_str(&format!("{indent}<{}{attributes}", node.name));
    if body.is_empty() {
        out.push_str("/>\n");
    } else if !has_children {
        out.push_str(&format!(">{body}</{}>\n", node.name));
    } else {
        out.push_str(&format!(">\n{body}{indent}</{}>\n", node.name));
    }
    Ok(true)
}

fn render_json(node: &JsonNode, event: &Value, item: &Value) -> Result<Option<Value>, RenderError> {
    Ok(match node {
        JsonNode::Literal(value) => Some(value.clone()),
        JsonNode::Expr(expr) => expr.eval(event, item)?,
        JsonNode::Text(text) => text.render(event, item)?.map(Value::String),
        JsonNode::Array(items) => {
            let mut out = Vec::new();
            for child in items {
                out.extend(render_json(child, event, item)?);
            }
            Some(Value::Array(out))
        }
        JsonNode::Object(fields) => {
            let mut out = Map::new();
            for (key, child) in fields {
                if let Some(value) = render_json(child, event, item)? {
                    out.insert(key.clone(), value);
                }
            }
            // Like an XML element, an object none of whose values exists is left out.
            (out.is_empty() == fields.is_empty()).then_some(Value::Object(out))
        }
        JsonNode::Each(expr, template) => {
            let items = match expr.eval(event, item)? {
                Some(Value::Array(items)) => items,
                Some(single) => vec![single],
                None => return Ok(None),
            };
            let mut out = Vec::with_capacity(items.len());
            for each_item in &items {
                out.extend(render_json(template, event, each_item)?);
            }
            Some(Value::Array(out))
        }
    })
}
