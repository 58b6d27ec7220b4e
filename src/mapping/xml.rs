//! A small, bounded XML document model for partner messages.
//!
//! This module owns turning a partner's XML bytes into a tree of elements whose names are
//! resolved to (namespace URI, local name), so that mappings match on the namespace and never
//! on the prefix a partner happened to choose. It accepts UTF-8 and ISO-8859-1 input, refuses
//! any DOCTYPE (and with it every entity declaration), and bounds depth, element count and
//! attribute count. It must not know anything about partners or the canonical model.

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Bounds applied while parsing, so that a hostile message cannot exhaust memory or stack.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    /// Deepest element nesting accepted.
    pub max_depth: usize,
    /// Most elements accepted in one document.
    pub max_elements: usize,
    /// Most attributes accepted on one element.
    pub max_attributes: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_elements: 10_000,
            max_attributes: 64,
        }
    }
}

/// Why an XML message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// The declared encoding is neither UTF-8 nor ISO-8859-1.
    #[error("unsupported encoding {0:?}: only UTF-8 and ISO-8859-1 are accepted")]
    UnsupportedEncoding(String),
    /// The message is in UTF-16 (a byte order mark, or zero bytes between ASCII ones).
    #[error("the message is in UTF-16: send it in UTF-8 (or ISO-8859-1, declared)")]
    Utf16,
    /// The bytes are not valid in the declared encoding.
    #[error(
        "the message is not valid UTF-8 (byte {0}); declare encoding=\"ISO-8859-1\" for Latin-1"
    )]
    InvalidUtf8(usize),
    /// A DOCTYPE (and so possibly entity declarations) was present.
    #[error("DOCTYPE and entity declarations are refused")]
    Doctype,
    /// An entity other than the five predefined ones was referenced (its name as an error
    /// quotes a name: cut short and escaped).
    #[error("undefined entity reference &{0};")]
    UndefinedEntity(String),
    /// An element or attribute used a prefix with no namespace declaration in scope.
    #[error("undeclared namespace prefix {0:?}")]
    UnknownPrefix(String),
    /// The document has no root element, or content after it.
    #[error("{0}")]
    Structure(&'static str),
    /// A size bound was exceeded.
    #[error("the message exceeds the limit of {limit} {what}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// The XML is not well-formed.
    #[error("not well-formed at byte {position}: {message}")]
    Malformed {
        /// Byte offset in the decoded text.
        position: u64,
        /// The parser's explanation.
        message: String,
    },
}

/// An expanded name: namespace URI (if any) and local name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedName {
    /// The namespace URI, `None` when the name is in no namespace.
    pub namespace: Option<Arc<str>>,
    /// The local part of the name.
    pub local: String,
}

impl ExpandedName {
    /// True when this name has the given namespace and local name.
    pub fn is(&self, namespace: Option<&str>, local: &str) -> bool {
        self.local == local && self.namespace.as_deref() == namespace
    }
}

/// One attribute of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute's expanded name (unprefixed attributes are in no namespace).
    pub name: ExpandedName,
    /// The unescaped value.
    pub value: String,
}

/// One element of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The element's expanded name.
    pub name: ExpandedName,
    /// Its attributes, namespace declarations excluded.
    pub attributes: Vec<Attribute>,
    /// Its direct character data (text and CDATA), concatenated.
    pub text: String,
    /// Indexes of its child elements in [`XmlDocument::elements`], in document order.
    pub children: Vec<usize>,
}

impl Element {
    /// The value of an attribute in no namespace, by local name.
    pub fn attribute(&self, namespace: Option<&str>, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|attribute| attribute.name.is(namespace, local))
            .map(|attribute| attribute.value.as_str())
    }
}

/// A parsed XML document: a flat arena of elements, the root at index 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlDocument {
    /// All elements in document order; index 0 is the root.
    pub elements: Vec<Element>,
}

impl XmlDocument {
    /// The root element.
    pub fn root(&self) -> &Element {
        &self.elements[0]
    }

    /// Parses raw bytes, honouring an `encoding` of UTF-8 or ISO-8859-1 in the XML declaration.
    pub fn parse(bytes: &[u8], limits: XmlLimits) -> Result<Self, XmlError> {
        let text = decode_bytes(bytes)?;
        Self::parse_str(&text, limits)
    }

    /// Parses text that is already decoded.
    pub fn parse_str(text: &str, limits: XmlLimits) -> Result<Self, XmlError> {
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        reader.config_mut().check_comments = true;
        // About one element per 40 bytes of a partner message: sized once, not regrown.
        let mut elements: Vec<Element> =
            Vec::with_capacity((text.len() / 40 + 1).min(limits.max_elements));
        let mut open: Vec<usize> = Vec::new();
        let mut root_closed = false;
        let mut scopes = Scopes::default();
        let mut first_event = true;
        loop {
            let position = reader.buffer_position();
            let event = reader.read_event().map_err(|error| XmlError::Malformed {
                position,
                message: error.to_string(),
            })?;
            let malformed = |message: String| XmlError::Malformed { position, message };
            // quick-xml reads leniently what the checks below refuse: an XML declaration
            // anywhere, names that are no XML names, `]]>` in text.
            let is_first = std::mem::replace(&mut first_event, false);
            match event {
                Event::Start(ref start) | Event::Empty(ref start) => {
                    check_qualified_name(start.name().0)
                        .map_err(|why| malformed(format!("an element's name {why}")))?;
                    if root_closed {
                        return Err(XmlError::Structure("content after the root element"));
                    }
                    if open.len() >= limits.max_depth {
                        return Err(XmlError::TooLarge {
                            what: "levels of nesting",
                            limit: limits.max_depth,
                        });
                    }
                    if elements.len() >= limits.max_elements {
                        return Err(XmlError::TooLarge {
                            what: "elements",
                            limit: limits.max_elements,
                        });
                    }
                    let depth = open.len();
                    let attributes = read_attributes(&reader, start, limits, &mut scopes, depth)?;
                    let (namespace, local) = scopes.resolve(start.name().0, true)?;
                    let name = ExpandedName {
                        namespace,
                        local: local.to_owned(),
                    };
                    let index = elements.len();
                    elements.push(Element {
                        name,
                        attributes,
                        text: String::new(),
                        children: Vec::new(),
                    });
                    if let Some(&parent) = open.last() {
                        elements[parent].children.push(index);
                    }
                    if matches!(event, Event::Start(_)) {
                        open.push(index);
                    } else {
                        scopes.close(depth);
                        if open.is_empty() {
                            root_closed = true;
                        }
                    }
                }
                Event::End(_) => {
                    open.pop();
                    scopes.close(open.len());
                    if open.is_empty() {
                        root_closed = true;
                    }
                }
                Event::Text(text) => {
                    // Indentation is most of the text events: skip it before normalising.
                    let raw: &str = &text;
                    if raw.contains("]]>") {
                        return Err(malformed(
                            "\"]]>\" in text: it ends a CDATA section, and must be written \
                             ]]&gt; elsewhere"
                                .into(),
                        ));
                    }
                    if !raw.trim().is_empty()
                        || open.last().is_some_and(|&i| {
                            elements[i].children.is_empty() && !elements[i].text.is_empty()
                        })
                    {
                        let content = text.xml10_content();
                        append_text(&mut elements, &open, &content)?;
                    }
                }
                Event::CData(data) => {
                    let content = data.xml10_content();
                    append_text(&mut elements, &open, &content)?;
                }
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(character)) => character.to_string(),
                        Ok(None) => {
                            let name = reference.xml10_content();
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .map(str::to_owned)
                                .ok_or_else(|| {
                                    XmlError::UndefinedEntity(super::json::quoted(&name))
                                })?
                        }
                        Err(error) => {
                            return Err(XmlError::Malformed {
                                position,
                                message: error.to_string(),
                            });
                        }
                    };
                    append_text(&mut elements, &open, &resolved)?;
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Decl(declaration) => {
                    if !is_first {
                        return Err(malformed(
                            "an XML declaration (<?xml …?>) comes first in the message, before \
                             anything else, whitespace included, and once"
                                .into(),
                        ));
                    }
                    let version = declaration
                        .version()
                        .map_err(|error| malformed(error.to_string()))?;
                    if &*version != "1.0" {
                        return Err(malformed(format!(
                            "XML version {version:?} is not read: declare version=\"1.0\""
                        )));
                    }
                }
                Event::PI(instruction) => {
                    if instruction.target().eq_ignore_ascii_case("xml") {
                        return Err(malformed(
                            "a processing instruction named xml is reserved: an XML \
                             declaration is written <?xml version=\"1.0\"?>, first"
                                .into(),
                        ));
                    }
                }
                Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if elements.is_empty() {
            return Err(XmlError::Structure("the message has no root element"));
        }
        if !open.is_empty() {
            return Err(XmlError::Structure("the root element is not closed"));
        }
        Ok(Self { elements })
    }
}

/// Adds character data to the element that is open, refusing text outside the root.
fn append_text(elements: &mut [Element], open: &[usize], content: &str) -> Result<(), XmlError> {
    match open.last() {
        Some(&index) => {
            let element = &mut elements[index];
            // Indentation between child elements is not text: skip it rather than keep it.
            let layout = element.text.is_empty() || !element.children.is_empty();
            if !(layout && content.trim().is_empty()) {
                element.text.push_str(content);
            }
            Ok(())
        }
        None if content.trim().is_empty() => Ok(()),
        None => Err(XmlError::Structure("text outside the root element")),
    }
}

/// One namespace binding: the depth of the declaring element, and the URI (none for
/// `xmlns=""`, which undeclares the default namespace).
type Binding = (usize, Option<Arc<str>>);

/// The namespace declarations in scope, resolved by hand (the prefix a partner chose never
/// matters, only the URI it is bound to), sharing one allocation per distinct URI.
///
/// Every look-up is a hash look-up, so that a message with many declarations costs time in
/// proportion to its size, never to the square of it.
#[derive(Default)]
struct Scopes {
    /// For each prefix ("" for the default namespace), its bindings from the outermost to the
    /// innermost: (depth of the declaring element, URI or none).
    bindings: HashMap<String, Vec<Binding>>,
    /// The prefixes declared, in document order, with the depth of the declaring element, so
    /// that closing an element forgets its declarations.
    declared: Vec<(usize, String)>,
    /// Every URI declared so far, shared by the names that use it.
    uris: HashSet<Arc<str>>,
}

/// The namespace the `xml` prefix is bound to by definition.
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

impl Scopes {
    fn declare(&mut self, depth: usize, prefix: &str, uri: &str) -> Result<(), XmlError> {
        let uri = if uri.is_empty() {
            if !prefix.is_empty() {
                return Err(XmlError::Structure(
                    "a namespace prefix cannot be bound to an empty URI",
                ));
            }
            None
        } else if let Some(known) = self.uris.get(uri) {
            Some(known.clone())
        } else {
            let shared: Arc<str> = Arc::from(uri);
            self.uris.insert(shared.clone());
            Some(shared)
        };
        self.bindings
            .entry(prefix.to_owned())
            .or_default()
            .push((depth, uri));
        self.declared.push((depth, prefix.to_owned()));
        Ok(())
    }

    /// Forgets the declarations of the element at `depth`.
    fn close(&mut self, depth: usize) {
        while self.declared.last().is_some_and(|(d, _)| *d >= depth) {
            let Some((_, prefix)) = self.declared.pop() else {
                break;
            };
            if let Some(stack) = self.bindings.get_mut(&prefix) {
                stack.pop();
                if stack.is_empty() {
                    self.bindings.remove(&prefix);
                }
            }
        }
    }

    /// Splits a qualified name and resolves its prefix; unprefixed element names take the
    /// default namespace, unprefixed attributes none.
    fn resolve<'n>(
        &mut self,
        qualified: &'n str,
        element: bool,
    ) -> Result<(Option<Arc<str>>, &'n str), XmlError> {
        let (prefix, local) = match qualified.split_once(':') {
            Some((prefix, local)) => (prefix, local),
            None if !element => return Ok((None, qualified)),
            None => ("", qualified),
        };
        if prefix == "xml" {
            let uri = self
                .uris
                .get(XML_NAMESPACE)
                .cloned()
                .unwrap_or_else(|| Arc::from(XML_NAMESPACE));
            return Ok((Some(uri), local));
        }
        match self.bindings.get(prefix).and_then(|stack| stack.last()) {
            Some((_, uri)) => Ok((uri.clone(), local)),
            None if prefix.is_empty() => Ok((None, local)),
            None => Err(XmlError::UnknownPrefix(prefix.to_owned())),
        }
    }
}

/// Whether `name` is an XML qualified name (Namespaces in XML 1.0): a name of XML 1.0's name
/// characters, with at most one colon, between a prefix and a local part that are both there.
/// Said why not, as the end of a sentence that begins with what was named.
fn check_qualified_name(name: &str) -> Result<(), String> {
    let shown = || name.chars().take(40).collect::<String>();
    let mut parts = name.split(':');
    let (first, second, more) = (parts.next(), parts.next(), parts.next());
    if more.is_some() {
        return Err(format!("{:?} has more than one colon", shown()));
    }
    for part in [first, second].into_iter().flatten() {
        let mut chars = part.chars();
        match chars.next() {
            None if name.is_empty() => {
                return Err("is empty (a < in text must be written &lt;)".to_owned());
            }
            None => return Err(format!("{:?} has an empty prefix or local part", shown())),
            Some(c) if !is_name_start(c) => {
                return Err(format!("{:?} does not begin with a letter or _", shown()));
            }
            Some(_) => {}
        }
        if let Some(c) = chars.find(|&c| !is_name_start(c) && !is_name_rest(c)) {
            return Err(format!(
                "{:?} holds {c:?}, which no XML name holds",
                shown()
            ));
        }
    }
    Ok(())
}

/// Whether `name` is an XML name without a colon (Namespaces in XML 1.0's `NCName`): what a
/// prefix or a local name is.
pub fn is_ncname(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(|c| is_name_start(c) || is_name_rest(c))
}

/// XML 1.0's `NameStartChar`, but the colon (which namespaces give a meaning).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// The characters XML 1.0's `NameChar` adds to `NameStartChar`.
fn is_name_rest(c: char) -> bool {
    matches!(c,
        '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn read_attributes(
    reader: &Reader<&[u8]>,
    start: &BytesStart<'_>,
    limits: XmlLimits,
    scopes: &mut Scopes,
    depth: usize,
) -> Result<Vec<Attribute>, XmlError> {
    // Namespace declarations are attributes too, and count toward the bound: checked before
    // any of them is read, so that an element with thousands of them is refused at once.
    let count = start
        .attributes()
        .with_checks(false)
        .take(limits.max_attributes + 1)
        .count();
    if count > limits.max_attributes {
        return Err(XmlError::TooLarge {
            what: "attributes on one element",
            limit: limits.max_attributes,
        });
    }
    // Declarations first: they apply to the element's own name and attributes.
    for attribute in start.attributes().with_checks(false) {
        let Ok(attribute) = attribute else { continue };
        let qualified = attribute.key.0;
        if qualified == "xmlns" || qualified.starts_with("xmlns:") {
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|error| XmlError::Malformed {
                    position: reader.buffer_position(),
                    message: error.to_string(),
                })?;
            scopes.declare(
                depth,
                qualified.strip_prefix("xmlns:").unwrap_or(""),
                &value,
            )?;
        }
    }
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|error| XmlError::Malformed {
            position: reader.buffer_position(),
            message: error.to_string(),
        })?;
        let qualified = attribute.key.0;
        check_qualified_name(qualified).map_err(|why| XmlError::Malformed {
            position: reader.buffer_position(),
            message: format!("an attribute's name {why}"),
        })?;
        if qualified == "xmlns" || qualified.starts_with("xmlns:") {
            continue;
        }
        let (namespace, local) = scopes.resolve(qualified, false)?;
        // Two prefixes bound to one namespace make two spellings of one attribute.
        if attributes.iter().any(|a: &Attribute| {
            a.name.local == local && a.name.namespace.as_deref() == namespace.as_deref()
        }) {
            return Err(XmlError::Malformed {
                position: reader.buffer_position(),
                message: format!(
                    "the attribute {local:?} is given twice (under two prefixes of one namespace)"
                ),
            });
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|error| match error {
                quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                    _,
                    name,
                )) => XmlError::UndefinedEntity(super::json::quoted(&name)),
                other => XmlError::Malformed {
                    position: reader.buffer_position(),
                    message: other.to_string(),
                },
            })?;
        attributes.push(Attribute {
            name: ExpandedName {
                namespace,
                local: local.to_owned(),
            },
            value: value.into_owned(),
        });
    }
    Ok(attributes)
}

/// Decodes the message bytes to text according to the XML declaration's `encoding`.
///
/// ISO-8859-1 is decoded by hand: each byte is the code point of the same value. The
/// WHATWG tables in `encoding_rs` map the label "iso-8859-1" to windows-1252, which differs
/// in 0x80..=0x9F, and partners who declare Latin-1 mean Latin-1.
pub fn decode_bytes(bytes: &[u8]) -> Result<Cow<'_, str>, XmlError> {
    if super::looks_like_utf16(bytes) {
        return Err(XmlError::Utf16);
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match declared_encoding(bytes)?.as_deref() {
        None | Some("utf-8") | Some("utf8") | Some("us-ascii") | Some("ascii") => {
            std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|error| XmlError::InvalidUtf8(error.valid_up_to()))
        }
        Some("iso-8859-1") | Some("iso8859-1") | Some("latin1") | Some("latin-1") | Some("l1")
        | Some("iso_8859-1") => Ok(Cow::Owned(
            bytes.iter().map(|&byte| char::from(byte)).collect(),
        )),
        Some(other) => Err(XmlError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Reads the `encoding` pseudo-attribute of a leading XML declaration, lower-cased.
fn declared_encoding(bytes: &[u8]) -> Result<Option<String>, XmlError> {
    if !bytes.starts_with(b"<?xml") {
        return Ok(None);
    }
    let end = bytes
        .windows(2)
        .take(256)
        .position(|pair| pair == b"?>")
        .ok_or(XmlError::Structure("the XML declaration is not closed"))?;
    let declaration = String::from_utf8_lossy(&bytes[..end]);
    let Some(at) = declaration.find("encoding") else {
        return Ok(None);
    };
    let rest = declaration[at + "encoding".len()..].trim_start();
    let rest = rest
        .strip_prefix('=')
        .ok_or(XmlError::Structure(
            "malformed encoding in the XML declaration",
        ))?
        .trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
    let quote = quote.ok_or(XmlError::Structure(
        "malformed encoding in the XML declaration",
    ))?;
    let value = rest[1..].split(quote).next().ok_or(XmlError::Structure(
        "malformed encoding in the XML declaration",
    ))?;
    Ok(Some(value.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<XmlDocument, XmlError> {
        XmlDocument::parse(text.as_bytes(), XmlLimits::default())
    }

    #[test]
    fn resolves_namespaces_whatever_the_prefix() {
        let a = parse(r#"<ci:A xmlns:ci="urn:x" ref="1"><ci:B n="2"/></ci:A>"#).unwrap();
        let b = parse(r#"<cons:A xmlns:cons="urn:x" ref="1"><cons:B n="2"/></cons:A>"#).unwrap();
        assert_eq!(a, b);
        assert!(a.root().name.is(Some("urn:x"), "A"));
        assert_eq!(a.root().attribute(None, "ref"), Some("1"));
    }

    #[test]
    fn namespace_scopes_nest_and_end_with_their_element() {
        let doc = parse(
            r#"<a xmlns="urn:d" xmlns:p="urn:p"><b xmlns=""><p:c p:x="1" xml:lang="fr"/></b><b/><p:d xmlns:p="urn:q"/><p:e/></a>"#,
        )
        .unwrap();
        let names: Vec<(Option<&str>, &str)> = doc
            .elements
            .iter()
            .map(|e| (e.name.namespace.as_deref(), e.name.local.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (Some("urn:d"), "a"),
                (None, "b"),
                (Some("urn:p"), "c"),
                (Some("urn:d"), "b"),
                (Some("urn:q"), "d"),
                (Some("urn:p"), "e"),
            ]
        );
        assert_eq!(doc.elements[2].attribute(Some("urn:p"), "x"), Some("1"));
        assert_eq!(
            doc.elements[2].attribute(Some("http://www.w3.org/XML/1998/namespace"), "lang"),
            Some("fr")
        );
        assert!(matches!(
            parse(r#"<a xmlns:p=""/>"#),
            Err(XmlError::Structure(_))
        ));
    }

    #[test]
    fn what_is_not_well_formed_is_refused() {
        for (text, why) in [
            ("<1bad/>", "does not begin with a letter"),
            ("<a><-b/></a>", "does not begin with a letter"),
            (
                "<a x\u{B7}=\"1\" \u{B7}y=\"2\"/>",
                "does not begin with a letter",
            ),
            ("<a:b:c xmlns:a=\"u\"/>", "more than one colon"),
            ("<a :x=\"1\"/>", "empty prefix"),
            (
                "<Nom>DIOP < FALL</Nom>",
                "is empty (a < in text must be written &lt;)",
            ),
            ("<a>x ]]> y</a>", "]]>"),
            ("<a/><?xml version=\"1.0\"?>", "comes first"),
            ("<a><?xml version=\"1.0\"?></a>", "comes first"),
            (" <?xml version=\"1.0\"?><a/>", "comes first"),
            ("<?xml version=\"1.1\"?><a/>", "version \"1.1\""),
            ("<a><?XML x?></a>", "reserved"),
            (
                "<a xmlns:p=\"u\" xmlns:q=\"u\" p:x=\"1\" q:x=\"2\"/>",
                "given twice",
            ),
        ] {
            match parse(text) {
                Err(XmlError::Malformed { message, .. }) => {
                    assert!(message.contains(why), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // What is well-formed stays so: names of other scripts, a declaration first, the same
        // local name in two namespaces, `]]>` escaped, `]]` alone.
        for text in [
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Résumé é-1=\"x\" _a.b=\"y\"/>",
            "<a xmlns:p=\"u\" xmlns:q=\"v\" p:x=\"1\" q:x=\"2\" x=\"3\"/>",
            "<a>x ]]&gt; y ]] z</a>",
            "<a><?app data?></a>",
        ] {
            assert!(parse(text).is_ok(), "{text}: {:?}", parse(text));
        }
    }

    #[test]
    fn reads_text_cdata_and_entities() {
        let doc = parse("<a>x &amp; <![CDATA[<y>]]> &#233;</a>").unwrap();
        assert_eq!(doc.root().text, "x & <y> é");
    }

    #[test]
    fn latin1_is_decoded_byte_for_byte() {
        let mut bytes = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>Thi".to_vec();
        bytes.push(0xE8);
        bytes.extend_from_slice(b"s</a>");
        let doc = XmlDocument::parse(&bytes, XmlLimits::default()).unwrap();
        assert_eq!(doc.root().text, "Thiès");
    }

    #[test]
    fn latin1_bytes_without_declaration_are_refused() {
        let error = XmlDocument::parse(b"<a>Thi\xE8s</a>", XmlLimits::default()).unwrap_err();
        assert_eq!(error, XmlError::InvalidUtf8(6));
        let utf16: Vec<u8> = "\u{FEFF}<a/>"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(decode_bytes(&utf16).unwrap_err(), XmlError::Utf16);
        let without_mark: Vec<u8> = "<a/>".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode_bytes(&without_mark).unwrap_err(), XmlError::Utf16);
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#;
        assert_eq!(parse(bomb).unwrap_err(), XmlError::Doctype);
        assert_eq!(
            parse("<a>&x;</a>").unwrap_err(),
            XmlError::UndefinedEntity("x".into())
        );
        assert_eq!(
            parse(r#"<a b="&x;"/>"#).unwrap_err(),
            XmlError::UndefinedEntity("x".into())
        );
        // The name is the sender's text: it is quoted cut short.
        let long = format!("<a>&{};</a>", "n".repeat(100));
        assert_eq!(
            parse(&long).unwrap_err(),
            XmlError::UndefinedEntity(format!("{}…", "n".repeat(40)))
        );
    }

    #[test]
    fn other_encodings_are_refused() {
        let error = parse(r#"<?xml version="1.0" encoding="UTF-16"?><a/>"#).unwrap_err();
        assert_eq!(error, XmlError::UnsupportedEncoding("utf-16".into()));
    }

    #[test]
    fn namespace_declarations_count_as_attributes() {
        // One root with 45,000 distinct declarations: refused at once, as too many attributes,
        // before any of them is bound.
        let mut root = String::from("<a");
        for i in 0..45_000 {
            root.push_str(&format!(" xmlns:p{i}=\"urn:x:{i}\""));
        }
        root.push_str("/>");
        let started = std::time::Instant::now();
        assert_eq!(
            parse(&root).unwrap_err(),
            XmlError::TooLarge {
                what: "attributes on one element",
                limit: 64
            }
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Declarations and attributes share the bound.
        let mixed = (0..32)
            .map(|i| format!(" xmlns:p{i}=\"urn:x:{i}\" a{i}=\"v\""))
            .collect::<String>();
        assert!(parse(&format!("<a{mixed}/>")).is_ok());
        let over = format!("<a{mixed} extra=\"v\"/>");
        assert!(matches!(parse(&over), Err(XmlError::TooLarge { .. })));
    }

    #[test]
    fn many_distinct_namespaces_cost_linear_time() {
        // About 1 MiB of siblings, each declaring 60 URIs never seen before: with a linear
        // search of the known URIs this is billions of comparisons.
        let mut text = String::from("<a>");
        let mut next = 0;
        while text.len() < 1_000_000 {
            text.push_str("<b");
            for _ in 0..60 {
                text.push_str(&format!(" xmlns:p{next}=\"u{next}\""));
                next += 1;
            }
            text.push_str("/>");
        }
        text.push_str("</a>");
        let started = std::time::Instant::now();
        let document = parse(&text).unwrap();
        assert!(document.elements.len() > 500);
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(10),
            "{next} declarations took {elapsed:?}"
        );
    }

    #[test]
    fn bounds_and_structure_are_enforced() {
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(matches!(parse(&deep), Err(XmlError::TooLarge { .. })));
        assert!(matches!(parse("<a></b>"), Err(XmlError::Malformed { .. })));
        assert!(matches!(parse("<a/><b/>"), Err(XmlError::Structure(_))));
        assert!(matches!(parse(""), Err(XmlError::Structure(_))));
        assert!(matches!(parse("<a>"), Err(XmlError::Structure(_))));
        assert!(matches!(parse("<p:a/>"), Err(XmlError::UnknownPrefix(_))));
    }
}
