//! XML framing of an XMPP stream: a small element tree, its serializer, and
//! [`StreamParser`], which turns stream bytes into a header and stanzas with
//! rxml while enforcing the stream limits.
//!
//! rxml's raw parser does the lexing and the well-formedness of names,
//! nesting and references; the namespaces (XML Namespaces 1.0) are resolved
//! here, straight into [`Element`]s: rxml's own resolver builds a map per
//! element, which cost a stream about as much as the rest of the parse.

use rxml::{Parse, RawEvent, RawParser, RawQName, WithOptions};

use crate::error::StreamErrorCondition;
use crate::Limits;

/// Namespace of the stream element (`stream:` prefix).
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Content namespace of client streams.
pub const NS_CLIENT: &str = "jabber:client";
/// Longest name, attribute value or text chunk rxml buffers at once.
const MAX_TOKEN: usize = 8192;
/// Prefixes one element may declare (`xmlns:p='...'`) beyond
/// [`Limits::max_attributes`]: the serializer declares one for each
/// attribute of a namespace, so a stanza that was taken parses again once
/// written; a stream header declares three.
const EXTRA_DECLARATIONS: usize = 8;

/// The `xml:` namespace (for `xml:lang`).
pub const NS_XML: &str = rxml::XMLNS_XML;

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data.
    Text(String),
}

/// One attribute, with its namespace (empty for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI of the attribute, empty for the usual unqualified ones.
    pub ns: String,
    /// Local name.
    pub name: String,
    /// Value (unescaped).
    pub value: String,
}

/// An XML element with namespace-resolved names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace URI.
    pub ns: String,
    /// Local name.
    pub name: String,
    /// Attributes in document order.
    pub attrs: Vec<Attr>,
    /// Children in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// A new element without attributes or children.
    pub fn new(ns: &str, name: &str) -> Element {
        Element {
            ns: ns.to_owned(),
            name: name.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Whether the element has this namespace and local name.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The value of an unqualified attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_empty() && a.name == name)
            .map(|a| a.value.as_str())
    }

    /// Sets (or, with `None`, removes) an unqualified attribute.
    pub fn set_attr(&mut self, name: &str, value: Option<&str>) {
        let pos = self
            .attrs
            .iter()
            .position(|a| a.ns.is_empty() && a.name == name);
        match (pos, value) {
            (Some(i), Some(v)) => self.attrs[i].value = v.to_owned(),
            (Some(i), None) => {
                self.attrs.remove(i);
            }
            (None, Some(v)) => self.attrs.push(Attr {
                ns: String::new(),
                name: name.to_owned(),
                value: v.to_owned(),
            }),
            (None, None) => {}
        }
    }

    /// Builder form of [`set_attr`](Self::set_attr).
    pub fn with_attr(mut self, name: &str, value: &str) -> Element {
        self.set_attr(name, Some(value));
        self
    }

    /// Builder: appends a child element.
    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: appends text.
    pub fn with_text(mut self, text: &str) -> Element {
        self.children.push(Node::Text(text.to_owned()));
        self
    }

    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this namespace and name.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, name))
    }

    /// Concatenated character data of the direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serializes the element; `parent_ns` is the default namespace in scope
    /// (`xmlns` is written only when it differs).
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        // Elements of the stream namespace use the `stream:` prefix declared
        // on the stream header, and those of the XML namespace the `xml:`
        // prefix every document has (it must never be the default
        // namespace); both leave the default namespace unchanged. Dialback
        // elements on a server stream use the `db:` prefix its header
        // declares: ejabberd's parser matches `db:result` and `db:verify`
        // by that literal name and ignores the same elements written with
        // a default namespace (XEP-0220 section 2.1 writes them prefixed).
        let prefix: &[u8] = match self.ns.as_str() {
            NS_STREAM => b"stream:",
            NS_XML => b"xml:",
            crate::ns::DIALBACK if parent_ns == crate::ns::SERVER => b"db:",
            _ => b"",
        };
        let default_ns = if prefix.is_empty() {
            self.ns.as_str()
        } else {
            parent_ns
        };
        out.push(b'<');
        out.extend_from_slice(prefix);
        out.extend_from_slice(self.name.as_bytes());
        if prefix.is_empty() && self.ns != parent_ns {
            out.extend_from_slice(b" xmlns='");
            escape_into(out, &self.ns, true);
            out.push(b'\'');
        }
        let mut prefixes = 0usize;
        for a in &self.attrs {
            out.push(b' ');
            if a.ns.is_empty() {
                out.extend_from_slice(a.name.as_bytes());
            } else if a.ns == NS_XML {
                out.extend_from_slice(b"xml:");
                out.extend_from_slice(a.name.as_bytes());
            } else {
                let prefix = format!("ns{prefixes}");
                prefixes += 1;
                out.extend_from_slice(b"xmlns:");
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"='");
                escape_into(out, &a.ns, true);
                out.extend_from_slice(b"' ");
                out.extend_from_slice(prefix.as_bytes());
                out.push(b':');
                out.extend_from_slice(a.name.as_bytes());
            }
            out.extend_from_slice(b"='");
            escape_into(out, &a.value, true);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write_to(out, default_ns),
                Node::Text(t) => escape_into(out, t, false),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(prefix);
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    /// Serializes to a string with `default_ns` in scope (handy in tests and logs).
    pub fn to_xml(&self, default_ns: &str) -> String {
        let mut out = Vec::with_capacity(self.len_hint());
        self.write_to(&mut out, default_ns);
        String::from_utf8(out).expect("serializer writes UTF-8")
    }

    /// About how long the element is once written (unescaped, without
    /// namespace declarations beyond its own): the buffer
    /// [`to_xml`](Self::to_xml) starts with, so that it seldom grows.
    fn len_hint(&self) -> usize {
        let attrs: usize = self
            .attrs
            .iter()
            .map(|a| a.name.len() + a.value.len() + 4)
            .sum();
        let children: usize = self
            .children
            .iter()
            .map(|c| match c {
                Node::Element(e) => e.len_hint(),
                Node::Text(t) => t.len(),
            })
            .sum();
        2 * self.name.len() + self.ns.len() + attrs + children + 16
    }
}

/// Escapes character data (`attr = false`) or a single-quoted attribute value.
pub fn escape_into(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            b'\r' => b"&#xD;",
            b'\n' if attr => b"&#xA;",
            b'\t' if attr => b"&#x9;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The opening `<stream:stream>` of a peer, as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamHeader {
    /// `to` attribute.
    pub to: Option<String>,
    /// `from` attribute.
    pub from: Option<String>,
    /// `version` attribute.
    pub version: Option<String>,
    /// `id` attribute (the receiving entity's stream id).
    pub id: Option<String>,
    /// `xml:lang` attribute.
    pub lang: Option<String>,
}

/// What [`StreamParser::next`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream header arrived.
    Header(StreamHeader),
    /// A complete top-level element (stanza or stream-level element).
    Stanza(Element),
    /// The peer closed its stream (`</stream:stream>`).
    End,
}

/// Incremental parser of one XML stream, with the limits of [`Limits`].
///
/// A stream restart (after STARTTLS or SASL) needs a new `StreamParser`.
#[derive(Debug)]
pub struct StreamParser {
    parser: RawParser,
    stack: Vec<Element>,
    /// The namespace declarations in scope, one frame per open element.
    scopes: Vec<Scope>,
    /// The element whose header is being read.
    head: Option<Head>,
    /// Depth of the parser: 0 outside the root, 1 inside the root, 2+ inside a stanza.
    depth: usize,
    /// Bytes the parser has taken from its input.
    consumed: usize,
    /// Bytes accounted to complete events.
    attributed: usize,
    /// Bytes of the stanza being parsed so far.
    stanza_bytes: usize,
    max_stanza_size: usize,
    max_depth: usize,
    max_attributes: usize,
    ended: bool,
    /// The error that ended the stream: every later call returns it.
    failed: Option<StreamErrorCondition>,
}

impl StreamParser {
    /// A parser for a new stream.
    pub fn new(limits: &Limits) -> StreamParser {
        // rxml reserves a scratch buffer of `max_token_length` bytes per
        // parser: keep it small (longer text is split into several events;
        // a longer name or attribute value is a policy violation) and give
        // it back whenever the parser is idle (see `next`).
        let options = rxml::parser::Options {
            max_token_length: limits.max_stanza_size.min(MAX_TOKEN),
            ..Default::default()
        };
        StreamParser {
            parser: RawParser::with_options(options),
            stack: Vec::new(),
            scopes: Vec::new(),
            head: None,
            depth: 0,
            consumed: 0,
            attributed: 0,
            stanza_bytes: 0,
            max_stanza_size: limits.max_stanza_size,
            max_depth: limits.max_depth,
            max_attributes: limits.max_attributes,
            ended: false,
            failed: None,
        }
    }

    /// Bytes taken from the input that belong to no complete event yet.
    pub fn buffered(&self) -> usize {
        self.consumed - self.attributed
    }

    /// Parses from `input` (advancing it) until one stream event is complete.
    ///
    /// Returns `Ok(None)` when `input` is exhausted without a complete event.
    /// The caller may stop calling after any event (for example after
    /// `<starttls/>`) and use the rest of `input` elsewhere.
    ///
    /// After an error every call returns that error again.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<Option<StreamEvent>, StreamErrorCondition> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let res = self.next_event(input);
        if let Err(e) = res {
            self.failed = Some(e);
        }
        res
    }

    fn next_event(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<StreamEvent>, StreamErrorCondition> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let before = input.len();
            let res = self.parser.parse(input, false);
            self.consumed += before - input.len();
            let ev = match res {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err(StreamErrorCondition::NotWellFormed),
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    self.check_size()?;
                    if self.buffered() == 0 {
                        // Idle between reads: an idle stream holds no scratch memory.
                        self.parser.release_temporaries();
                    }
                    return Ok(None);
                }
                Err(rxml::error::EndOrError::Error(e)) => return Err(map_error(&e)),
            };
            if let Some(out) = self.event(ev)? {
                return Ok(Some(out));
            }
            self.check_size()?;
        }
    }

    fn check_size(&self) -> Result<(), StreamErrorCondition> {
        if self.stanza_bytes + self.buffered() > self.max_stanza_size {
            return Err(StreamErrorCondition::PolicyViolation);
        }
        Ok(())
    }

    fn event(&mut self, ev: RawEvent) -> Result<Option<StreamEvent>, StreamErrorCondition> {
        let len = ev.metrics().len();
        self.attributed += len;
        // The stream header's bytes count like a stanza's (until it is
        // complete), and so do those of each stanza.
        self.stanza_bytes += len;
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(None),
            RawEvent::ElementHeadOpen(_, name) => {
                if self.depth == 1 {
                    // A stanza begins: its bytes from here.
                    self.stanza_bytes = len;
                }
                if self.depth > self.max_depth {
                    return Err(StreamErrorCondition::PolicyViolation);
                }
                self.head = Some(Head {
                    name,
                    attrs: Vec::new(),
                    scope: Scope::default(),
                });
                Ok(None)
            }
            RawEvent::Attribute(_, (prefix, name), value) => {
                let head = self.head.as_mut().expect("rxml: attributes follow a head");
                match prefix.as_ref().map(|p| p.as_str()) {
                    Some("xmlns") => {
                        let prefixes = &mut head.scope.prefixes;
                        if prefixes.len() >= self.max_attributes + EXTRA_DECLARATIONS {
                            return Err(StreamErrorCondition::PolicyViolation);
                        }
                        if prefixes.iter().any(|(p, _)| p == name.as_str()) {
                            return Err(StreamErrorCondition::NotWellFormed);
                        }
                        prefixes.push((name.into_inner(), value));
                    }
                    // Written twice by the Kontalk client (Smack; KONTALK.md
                    // section 5): the last one counts, as with rxml's own
                    // resolver.
                    None if name == "xmlns" => head.scope.default = Some(value),
                    _ => {
                        if head.attrs.len() >= self.max_attributes {
                            return Err(StreamErrorCondition::PolicyViolation);
                        }
                        head.attrs.push(((prefix, name), value));
                    }
                }
                Ok(None)
            }
            RawEvent::ElementHeadClose(_) => {
                let head = self.head.take().expect("rxml: a head closes once");
                self.scopes.push(head.scope);
                let ns = self
                    .resolve(head.name.0.as_ref().map(|p| p.as_str()))?
                    .to_owned();
                // Room for the `from` a stanza is stamped with.
                let mut attrs = Vec::with_capacity(head.attrs.len() + 1);
                for ((prefix, name), value) in head.attrs {
                    let ns = match &prefix {
                        None => String::new(),
                        Some(p) => self.resolve(Some(p.as_str()))?.to_owned(),
                    };
                    // Namespaces in XML 1.0, "Attributes Unique".
                    if attrs
                        .iter()
                        .any(|a: &Attr| a.name == name.as_str() && a.ns == ns)
                    {
                        return Err(StreamErrorCondition::NotWellFormed);
                    }
                    attrs.push(Attr {
                        ns,
                        name: name.into_inner(),
                        value,
                    });
                }
                self.start_element(ns, head.name.1.into_inner(), attrs)
            }
            RawEvent::ElementFoot(_) => {
                self.scopes.pop();
                self.depth -= 1;
                if self.depth == 0 {
                    self.ended = true;
                    return Ok(Some(StreamEvent::End));
                }
                let el = self.stack.pop().expect("balanced by rxml");
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(Node::Element(el));
                        Ok(None)
                    }
                    None => {
                        self.stanza_bytes = 0;
                        Ok(Some(StreamEvent::Stanza(el)))
                    }
                }
            }
            RawEvent::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(parent) => match parent.children.last_mut() {
                        Some(Node::Text(t)) => t.push_str(&text),
                        _ => parent.children.push(Node::Text(text)),
                    },
                    None => {
                        // Between stanzas only whitespace (keepalives) is allowed.
                        if !text.bytes().all(|b| b" \t\r\n".contains(&b)) {
                            return Err(StreamErrorCondition::BadFormat);
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    /// The namespace `prefix` stands for where the parser is (`None`: the
    /// default namespace, empty when none is declared).
    fn resolve(&self, prefix: Option<&str>) -> Result<&str, StreamErrorCondition> {
        match prefix {
            None => Ok(self
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.default.as_deref())
                .unwrap_or("")),
            Some("xml") => Ok(NS_XML),
            Some(p) => self
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.prefixes.iter().find(|(q, _)| q == p))
                .map(|(_, ns)| ns.as_str())
                .ok_or(StreamErrorCondition::BadNamespacePrefix),
        }
    }

    /// An element's header is complete.
    fn start_element(
        &mut self,
        ns: String,
        name: String,
        attrs: Vec<Attr>,
    ) -> Result<Option<StreamEvent>, StreamErrorCondition> {
        if self.depth == 0 {
            self.depth = 1;
            self.stanza_bytes = 0;
            if ns != NS_STREAM || name != "stream" {
                return Err(StreamErrorCondition::InvalidNamespace);
            }
            let mut header = StreamHeader::default();
            for Attr { ns, name, value } in attrs {
                let slot = match (ns.as_str(), name.as_str()) {
                    ("", "to") => &mut header.to,
                    ("", "from") => &mut header.from,
                    ("", "version") => &mut header.version,
                    ("", "id") => &mut header.id,
                    (NS_XML, "lang") => &mut header.lang,
                    _ => continue,
                };
                *slot = Some(value);
            }
            return Ok(Some(StreamEvent::Header(header)));
        }
        self.depth += 1;
        self.stack.push(Element {
            ns,
            name,
            attrs,
            children: Vec::new(),
        });
        Ok(None)
    }
}

/// The namespace declarations of one element.
#[derive(Debug, Default)]
struct Scope {
    /// `xmlns='...'` (empty: no default namespace from here on).
    default: Option<String>,
    /// `xmlns:prefix='...'`.
    prefixes: Vec<(String, String)>,
}

/// An element whose header is being read.
#[derive(Debug)]
struct Head {
    name: RawQName,
    attrs: Vec<(RawQName, String)>,
    scope: Scope,
}

/// Parses one stored stanza (serialized with `jabber:client` as the default
/// namespace, as [`Element::to_xml`] writes it).
pub fn parse_fragment(xml: &str, limits: &Limits) -> Option<Element> {
    parse_fragment_in(xml, NS_CLIENT, limits)
}

/// [`parse_fragment`] in a stream whose default namespace is `default_ns`
/// (a stanza as written on a server-to-server stream, `jabber:server`).
pub fn parse_fragment_in(xml: &str, default_ns: &str, limits: &Limits) -> Option<Element> {
    let mut p = StreamParser::new(limits);
    let doc = format!("<stream:stream xmlns='{default_ns}' xmlns:stream='{NS_STREAM}'>{xml}");
    let mut input = doc.as_bytes();
    match p.next(&mut input).ok()? {
        Some(StreamEvent::Header(_)) => {}
        _ => return None,
    }
    match p.next(&mut input).ok()? {
        Some(StreamEvent::Stanza(el)) => Some(el),
        _ => None,
    }
}

fn map_error(e: &rxml::Error) -> StreamErrorCondition {
    match e {
        rxml::Error::RestrictedXml("only utf-8 encoding is allowed") => {
            StreamErrorCondition::UnsupportedEncoding
        }
        rxml::Error::RestrictedXml("event too long")
        | rxml::Error::RestrictedXml("long name or reference") => {
            StreamErrorCondition::PolicyViolation
        }
        // `<!DOCTYPE` and other markup declarations.
        rxml::Error::RestrictedXml(_)
        | rxml::Error::InvalidSyntax("malformed cdata or comment section start") => {
            StreamErrorCondition::RestrictedXml
        }
        // RFC 6120 11.1: entity references other than the predefined ones.
        rxml::Error::UndeclaredEntity => StreamErrorCondition::RestrictedXml,
        rxml::Error::UndeclaredNamespacePrefix(_) => StreamErrorCondition::BadNamespacePrefix,
        other => {
            log::trace!("xml error: {other:?}");
            StreamErrorCondition::NotWellFormed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(
        p: &mut StreamParser,
        mut input: &[u8],
    ) -> Result<Vec<StreamEvent>, StreamErrorCondition> {
        let mut out = Vec::new();
        while let Some(ev) = p.next(&mut input)? {
            out.push(ev);
        }
        Ok(out)
    }

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' xml:lang='en'>";

    #[test]
    fn header_and_stanzas() {
        let mut p = StreamParser::new(&Limits::default());
        let evs = parse_all(&mut p, HEADER).unwrap();
        assert_eq!(
            evs,
            vec![StreamEvent::Header(StreamHeader {
                to: Some("localhost".into()),
                from: None,
                version: Some("1.0".into()),
                lang: Some("en".into()),
                id: None,
            })]
        );
        let evs = parse_all(
            &mut p,
            b" <message to='a@b'><body>hi &amp; bye</body></message>\n</stream:stream>",
        )
        .unwrap();
        let StreamEvent::Stanza(m) = &evs[0] else {
            panic!()
        };
        assert!(m.is(NS_CLIENT, "message"));
        assert_eq!(m.child(NS_CLIENT, "body").unwrap().text(), "hi & bye");
        assert_eq!(evs[1], StreamEvent::End);
        assert_eq!(
            m.to_xml(NS_CLIENT),
            "<message to='a@b'><body>hi &amp; bye</body></message>"
        );
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let doc = [
            HEADER,
            b"<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
        ]
        .concat();
        let mut whole = StreamParser::new(&Limits::default());
        let a = parse_all(&mut whole, &doc).unwrap();
        let mut bytewise = StreamParser::new(&Limits::default());
        let mut b = Vec::new();
        for byte in &doc {
            b.extend(parse_all(&mut bytewise, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(a, b);
        assert_eq!(whole.buffered(), 0);
    }

    #[test]
    fn stops_right_after_an_element() {
        let mut p = StreamParser::new(&Limits::default());
        let doc = [
            HEADER,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01",
        ]
        .concat();
        let mut input = &doc[..];
        assert!(matches!(
            p.next(&mut input),
            Ok(Some(StreamEvent::Header(_)))
        ));
        assert!(matches!(
            p.next(&mut input),
            Ok(Some(StreamEvent::Stanza(_)))
        ));
        assert_eq!(p.buffered(), 0);
        assert_eq!(input, b"\x16\x03\x01");
    }

    #[test]
    fn limits_and_errors() {
        let limits = Limits {
            max_stanza_size: 10_000,
            max_depth: 4,
            max_attributes: 3,
            ..Limits::default()
        };
        let cases: Vec<(Vec<u8>, StreamErrorCondition)> = vec![
            (
                b"<a:b><a/>".to_vec(),
                StreamErrorCondition::BadNamespacePrefix,
            ),
            (
                b"<m><a><b><c><d><e/></d></c></b></a></m>".to_vec(),
                StreamErrorCondition::PolicyViolation,
            ),
            (
                b"<m a='1' b='2' c='3' d='4'/>".to_vec(),
                StreamErrorCondition::PolicyViolation,
            ),
            (
                [&b"<m a='"[..], &vec![b'x'; 20_000]].concat(),
                StreamErrorCondition::PolicyViolation,
            ),
            (
                [&b"<m>"[..], &vec![b'x'; 20_000]].concat(),
                StreamErrorCondition::PolicyViolation,
            ),
            (b"<!-- c -->".to_vec(), StreamErrorCondition::RestrictedXml),
            (b"<?pi x?>".to_vec(), StreamErrorCondition::RestrictedXml),
            (b"<m></n>".to_vec(), StreamErrorCondition::NotWellFormed),
            (b"<m>\xff</m>".to_vec(), StreamErrorCondition::NotWellFormed),
            (b"hello".to_vec(), StreamErrorCondition::BadFormat),
            (
                b"<m>&ent;</m>".to_vec(),
                StreamErrorCondition::RestrictedXml,
            ),
        ];
        for (body, expected) in cases {
            let mut p = StreamParser::new(&limits);
            let mut doc = HEADER.to_vec();
            doc.extend_from_slice(&body);
            doc.extend_from_slice(b"<sentinel/>");
            assert_eq!(
                parse_all(&mut p, &doc).map(|_| ()),
                Err(expected),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        // The stanza size limit also holds when the bytes arrive in small pieces.
        let mut p = StreamParser::new(&limits);
        parse_all(&mut p, HEADER).unwrap();
        let chunk = [b'y'; 1000];
        parse_all(&mut p, b"<m a='").unwrap();
        let mut res = Ok(Vec::new());
        for _ in 0..20 {
            res = parse_all(&mut p, &chunk);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(StreamErrorCondition::PolicyViolation));
    }

    #[test]
    fn namespaces_resolve_as_xml_namespaces_says() {
        let mut p = StreamParser::new(&Limits::default());
        let doc = [
            HEADER,
            b"<message xmlns:x='urn:x' to='t' x:a='1' id='i'>\
              <x:e xmlns:x='urn:inner' x:b='2'/><x:f/>\
              <g xmlns='urn:g'><h xmlns=''/><xml:lang/></g></message>",
        ]
        .concat();
        let evs = parse_all(&mut p, &doc).unwrap();
        let Some(StreamEvent::Stanza(m)) = evs.get(1) else {
            panic!("{evs:?}");
        };
        assert_eq!(m.ns, NS_CLIENT, "the stream header's default");
        let attrs: Vec<(&str, &str, &str)> = m
            .attrs
            .iter()
            .map(|a| (a.ns.as_str(), a.name.as_str(), a.value.as_str()))
            .collect();
        // Declarations are no attributes; the others keep their order.
        assert_eq!(
            attrs,
            [("", "to", "t"), ("urn:x", "a", "1"), ("", "id", "i")]
        );
        let e = m
            .child("urn:inner", "e")
            .expect("the inner declaration wins");
        assert_eq!(e.attrs[0].ns, "urn:inner");
        assert!(m.child("urn:x", "f").is_some(), "and ends with its element");
        let g = m.child("urn:g", "g").unwrap();
        assert!(
            g.child("", "h").is_some(),
            "xmlns='' undeclares the default"
        );
        assert!(
            g.child(NS_XML, "lang").is_some(),
            "xml: needs no declaration"
        );

        for (body, expected) in [
            // The same attribute through two prefixes of one namespace.
            (
                &b"<m xmlns:a='urn:a' xmlns:b='urn:a' a:x='1' b:x='2'/>"[..],
                StreamErrorCondition::NotWellFormed,
            ),
            (b"<m a='1' a='2'/>", StreamErrorCondition::NotWellFormed),
            (
                b"<m xmlns:a='urn:a' xmlns:a='urn:b'/>",
                StreamErrorCondition::NotWellFormed,
            ),
            // A prefix declared on a sibling is out of scope.
            (
                b"<m><n xmlns:a='urn:a'/><a:o/></m>",
                StreamErrorCondition::BadNamespacePrefix,
            ),
            (b"<m a:x='1'/>", StreamErrorCondition::BadNamespacePrefix),
            (b"<xmlns:m/>", StreamErrorCondition::BadNamespacePrefix),
        ] {
            let mut p = StreamParser::new(&Limits::default());
            assert_eq!(
                parse_all(&mut p, &[HEADER, body].concat()).map(|_| ()),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_header_is_held_to_the_stanza_size_and_an_error_stays() {
        let limits = Limits {
            max_stanza_size: 10_000,
            ..Limits::default()
        };
        // A header that never ends, in pieces (each attribute well under
        // the attribute count and token limits): refused once it is a
        // stanza's size.
        let mut p = StreamParser::new(&limits);
        let mut res = parse_all(
            &mut p,
            b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'",
        );
        let mut fed = 0;
        let mut i = 0;
        while res.is_ok() && fed < 100_000 {
            let piece = format!(" a{i}='{}'", "v".repeat(1000));
            fed += piece.len();
            i += 1;
            res = parse_all(&mut p, piece.as_bytes());
        }
        assert_eq!(
            res,
            Err(StreamErrorCondition::PolicyViolation),
            "after {fed} bytes"
        );
        assert!(fed <= 11_000, "{fed}");
        // The same error again, whatever comes next.
        assert_eq!(
            parse_all(&mut p, b"<m/>"),
            Err(StreamErrorCondition::PolicyViolation)
        );
        // Prefixes declared on one element: no more than attributes (and a few).
        let n = Limits::default().max_attributes + 9;
        let decls: String = (0..n).map(|i| format!(" xmlns:p{i}='u'")).collect();
        let mut p = StreamParser::new(&Limits::default());
        let doc = [HEADER, format!("<m{decls}/>").as_bytes()].concat();
        assert_eq!(
            parse_all(&mut p, &doc),
            Err(StreamErrorCondition::PolicyViolation)
        );
    }

    #[test]
    fn header_checks() {
        for (doc, expected) in [
            (
                &b"<stream xmlns='jabber:client'>"[..],
                StreamErrorCondition::InvalidNamespace,
            ),
            (
                b"<?xml version='1.0' encoding='ISO-8859-1'?><stream/>",
                StreamErrorCondition::UnsupportedEncoding,
            ),
            (
                b"<!DOCTYPE foo><stream/>",
                StreamErrorCondition::RestrictedXml,
            ),
        ] {
            let mut p = StreamParser::new(&Limits::default());
            assert_eq!(
                parse_all(&mut p, doc).map(|_| ()),
                Err(expected),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn stream_namespace_uses_the_stream_prefix() {
        let f = Element::new(NS_STREAM, "features")
            .with_child(Element::new("urn:x", "a").with_child(Element::new(NS_CLIENT, "b")));
        assert_eq!(
            f.to_xml(NS_CLIENT),
            "<stream:features><a xmlns='urn:x'><b xmlns='jabber:client'/></a></stream:features>"
        );
    }

    #[test]
    fn dialback_elements_use_the_db_prefix_on_server_streams_only() {
        let result = Element::new(crate::ns::DIALBACK, "result")
            .with_attr("type", "error")
            .with_child(Element::new(crate::ns::SERVER, "error"));
        assert_eq!(
            result.to_xml(crate::ns::SERVER),
            "<db:result type='error'><error/></db:result>"
        );
        // A client stream declares no `db:` prefix.
        assert_eq!(
            result.to_xml(NS_CLIENT),
            "<result xmlns='jabber:server:dialback' type='error'>\
             <error xmlns='jabber:server'/></result>"
        );
    }

    #[test]
    fn elements_of_the_xml_namespace_keep_the_xml_prefix() {
        // Found by the stanza_roundtrip fuzz target: `xmlns='...XML/1998/namespace'`
        // is not well-formed, so the recipient's stream would break.
        let doc = [HEADER, b"<message><xml:foo a='1'><b/></xml:foo></message>"].concat();
        let mut p = StreamParser::new(&Limits::default());
        let evs = parse_all(&mut p, &doc).unwrap();
        let StreamEvent::Stanza(m) = &evs[1] else {
            panic!()
        };
        let xml = m.to_xml(NS_CLIENT);
        assert_eq!(xml, "<message><xml:foo a='1'><b/></xml:foo></message>");
        assert_eq!(parse_fragment(&xml, &Limits::default()).as_ref(), Some(m));
    }

    #[test]
    fn serializer_escapes_and_namespaces() {
        let el = Element::new(NS_CLIENT, "message")
            .with_attr("to", "a'b<c>&\"")
            .with_child(Element::new("urn:x", "x").with_text("<&>"));
        assert_eq!(
            el.to_xml(NS_CLIENT),
            "<message to='a&apos;b&lt;c&gt;&amp;&quot;'><x xmlns='urn:x'>&lt;&amp;&gt;</x></message>"
        );
    }
}
