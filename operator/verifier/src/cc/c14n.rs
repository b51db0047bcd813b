//! XML canonicalization for the signatures NVIDIA puts on its RIMs: Canonical XML 1.1 and
//! 1.0 (inclusive) and Exclusive XML Canonicalization 1.0, all without comments, of a whole
//! document or of one element's subtree, leaving out one excluded subtree (the enveloped
//! `<Signature>`).
//!
//! Written here rather than taken from a crate: the one pure-Rust XML-DSig crate on
//! crates.io (`xml-sec`) calls itself an early pre-release not fit for production, and the
//! mature implementations bind libxml2/xmlsec1 (C). This is the subset RIMs need, built on
//! `roxmltree`'s conforming parser (entities expanded, line ends and attribute values
//! normalised, DTDs refused), following the W3C specifications:
//!
//! - every element as start and end tag (`<e></e>`), its QName as written;
//! - namespace declarations before attributes, sorted by prefix (the default first); a
//!   declaration is written where it is not already in effect in the nearest written
//!   ancestor (inclusive), or only where visibly used (exclusive, plus the `InclusiveNamespaces`
//!   prefix list); `xmlns=""` where a written ancestor had a default namespace;
//! - attributes sorted by namespace URI then local name, unqualified ones first, values in
//!   double quotes with `& < " TAB LF CR` escaped;
//! - text with `& < > CR` escaped; comments dropped; processing instructions kept, with a line
//!   feed between them and the document element at the top level; no XML declaration, no DTD;
//! - for a subtree (inclusive modes), the namespaces in scope of its apex and the inheritable
//!   `xml:lang`/`xml:space` attributes of its ancestors carried onto the apex.
//!
//! `xml:base` and `xml:id` on the ancestors of a canonicalized subtree, whose handling differs
//! between 1.0 and 1.1, are refused rather than guessed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use roxmltree::{Node, NodeId};

/// The XML namespace, implicitly declared everywhere and never written.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Deepest element nesting canonicalized (RIMs nest four deep).
pub const MAX_DEPTH: usize = 64;

/// The canonicalization algorithms supported (all without comments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Canonical XML 1.1, `http://www.w3.org/2006/12/xml-c14n11` (NVIDIA's RIMs).
    Inclusive11,
    /// Canonical XML 1.0, `http://www.w3.org/TR/2001/REC-xml-c14n-20010315`.
    Inclusive10,
    /// Exclusive XML Canonicalization 1.0, `http://www.w3.org/2001/10/xml-exc-c14n#`, with
    /// the prefixes of its `InclusiveNamespaces PrefixList` (`#default` for the default one).
    Exclusive { inclusive_prefixes: Vec<String> },
}

impl Algorithm {
    /// The algorithm an XML-DSig `Algorithm` URI names, or `None` for one not supported
    /// (including the `#WithComments` variants).
    pub fn from_uri(uri: &str) -> Option<Self> {
        match uri {
            "http://www.w3.org/2006/12/xml-c14n11" => Some(Self::Inclusive11),
            "http://www.w3.org/TR/2001/REC-xml-c14n-20010315" => Some(Self::Inclusive10),
            "http://www.w3.org/2001/10/xml-exc-c14n#" => Some(Self::Exclusive {
                inclusive_prefixes: Vec::new(),
            }),
            _ => None,
        }
    }
}

/// Canonicalizes `apex` (the document root node, or an element) leaving out the subtree of
/// `exclude`, if given.
pub fn canonicalize(
    apex: Node<'_, '_>,
    algorithm: &Algorithm,
    exclude: Option<NodeId>,
) -> Result<String, String> {
    let mut c = Canonicalizer {
        algorithm,
        exclude,
        out: String::new(),
    };
    if apex.is_root() {
        c.document(apex)?;
    } else if apex.is_element() {
        let inherited = c.apex_inheritance(apex)?;
        c.element(apex, &Rendered::default(), &inherited, 0)?;
    } else {
        return Err("only a document or an element can be canonicalized".into());
    }
    Ok(c.out)
}

/// The namespace declarations in effect in the nearest written ancestor: prefix ("" for the
/// default namespace) → URI.
#[derive(Clone, Default)]
struct Rendered(BTreeMap<String, String>);

struct Canonicalizer<'a> {
    algorithm: &'a Algorithm,
    exclude: Option<NodeId>,
    out: String,
}

impl Canonicalizer<'_> {
    fn document(&mut self, root: Node<'_, '_>) -> Result<(), String> {
        let mut seen_element = false;
        for child in root.children() {
            if Some(child.id()) == self.exclude {
                continue;
            }
            if child.is_element() {
                self.element(child, &Rendered::default(), &[], 0)?;
                seen_element = true;
            } else if child.is_pi() {
                // A line feed after a PI before the document element, before one after it.
                if seen_element {
                    self.out.push('\n');
                }
                self.pi(child);
                if !seen_element {
                    self.out.push('\n');
                }
            }
            // Comments are dropped; text outside the document element is only whitespace.
        }
        Ok(())
    }

    /// The `xml:*` attributes the apex of a subtree inherits (inclusive modes only).
    fn apex_inheritance(&self, apex: Node<'_, '_>) -> Result<Vec<(String, String)>, String> {
        if matches!(self.algorithm, Algorithm::Exclusive { .. }) {
            return Ok(Vec::new());
        }
        let mut inherited: BTreeMap<String, String> = BTreeMap::new();
        for ancestor in apex.ancestors().skip(1).filter(|n| n.is_element()) {
            for a in ancestor.attributes() {
                if a.namespace() != Some(XML_NS) {
                    continue;
                }
                match a.name() {
                    "lang" | "space" => {
                        // The nearest ancestor wins: ancestors come nearest first.
                        inherited
                            .entry(a.name().to_owned())
                            .or_insert_with(|| a.value().to_owned());
                    }
                    other => {
                        return Err(format!(
                            "xml:{other} on an ancestor of the signed element is not supported"
                        ));
                    }
                }
            }
        }
        Ok(inherited
            .into_iter()
            .filter(|(name, _)| {
                !apex
                    .attributes()
                    .any(|a| a.namespace() == Some(XML_NS) && a.name() == name)
            })
            .collect())
    }

    fn element(
        &mut self,
        e: Node<'_, '_>,
        parent: &Rendered,
        inherited_xml: &[(String, String)],
        depth: usize,
    ) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(format!("elements nested deeper than {MAX_DEPTH}"));
        }
        let source = e.document().input_text();
        let qname = element_qname(source, e)?;
        let in_scope: BTreeMap<String, String> = e
            .namespaces()
            .filter(|ns| ns.uri() != XML_NS)
            .map(|ns| (ns.name().unwrap_or("").to_owned(), ns.uri().to_owned()))
            .collect();

        // Which namespace declarations to write here.
        let candidates: Vec<String> = match self.algorithm {
            Algorithm::Inclusive10 | Algorithm::Inclusive11 => {
                in_scope.keys().cloned().chain([String::new()]).collect()
            }
            Algorithm::Exclusive { inclusive_prefixes } => {
                let mut used: Vec<String> = vec![prefix_of(qname).to_owned()];
                for a in e.attributes() {
                    let aq = &source[a.range_qname()];
                    if a.namespace().is_some() && a.namespace() != Some(XML_NS) {
                        used.push(prefix_of(aq).to_owned());
                    }
                }
                used.extend(
                    inclusive_prefixes
                        .iter()
                        .map(|p| if p == "#default" { "" } else { p.as_str() })
                        .map(str::to_owned),
                );
                used
            }
        };
        let mut rendered = parent.clone();
        let mut decls: BTreeMap<String, String> = BTreeMap::new();
        for prefix in candidates {
            let uri = in_scope.get(&prefix).map(String::as_str).unwrap_or("");
            let shown = parent.0.get(&prefix).map(String::as_str).unwrap_or("");
            if prefix.is_empty() {
                // The default namespace: written when it differs from the one in effect
                // (`xmlns=""` undeclares an inherited default).
                if uri != shown {
                    decls.insert(prefix.clone(), uri.to_owned());
                }
            } else if !uri.is_empty() && parent.0.get(&prefix).map(String::as_str) != Some(uri) {
                decls.insert(prefix.clone(), uri.to_owned());
            }
            if !uri.is_empty() || prefix.is_empty() {
                rendered.0.insert(prefix, uri.to_owned());
            }
        }

        let _ = write!(self.out, "<{qname}");
        for (prefix, uri) in &decls {
            if prefix.is_empty() {
                self.out.push_str(" xmlns=\"");
            } else {
                let _ = write!(self.out, " xmlns:{prefix}=\"");
            }
            escape_attribute(&mut self.out, uri);
            self.out.push('"');
        }
        let mut attributes: Vec<(&str, &str, String, &str)> = e
            .attributes()
            .map(|a| {
                (
                    a.namespace().unwrap_or(""),
                    a.name(),
                    source[a.range_qname()].to_owned(),
                    a.value(),
                )
            })
            .collect();
        for (name, value) in inherited_xml {
            attributes.push((XML_NS, name, format!("xml:{name}"), value));
        }
        attributes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, qname, value) in &attributes {
            let _ = write!(self.out, " {qname}=\"");
            escape_attribute(&mut self.out, value);
            self.out.push('"');
        }
        self.out.push('>');

        for child in e.children() {
            if Some(child.id()) == self.exclude {
                continue;
            }
            if child.is_element() {
                self.element(child, &rendered, &[], depth + 1)?;
            } else if child.is_text() {
                escape_text(&mut self.out, child.text().unwrap_or(""));
            } else if child.is_pi() {
                self.pi(child);
            }
        }
        let _ = write!(self.out, "</{qname}>");
        Ok(())
    }

    fn pi(&mut self, node: Node<'_, '_>) {
        if let Some(pi) = node.pi() {
            let _ = write!(self.out, "<?{}", pi.target);
            if let Some(value) = pi.value.filter(|v| !v.is_empty()) {
                let _ = write!(self.out, " {value}");
            }
            self.out.push_str("?>");
        }
    }
}

/// The element's QName as written in the source (C14N keeps prefixes; `roxmltree` resolves
/// them away, so the name is read back from the start tag it has already checked).
fn element_qname<'i>(source: &'i str, e: Node<'_, 'i>) -> Result<&'i str, String> {
    let start = e.range().start + 1;
    let tag = source
        .get(start..)
        .ok_or_else(|| "element position outside the document".to_string())?;
    let end = tag
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(tag.len());
    let qname = &tag[..end];
    if qname.is_empty() || !qname.ends_with(e.tag_name().name()) {
        return Err(format!(
            "cannot read the name of element {:?} back from the document",
            e.tag_name().name()
        ));
    }
    Ok(qname)
}

fn prefix_of(qname: &str) -> &str {
    qname.split_once(':').map(|(p, _)| p).unwrap_or("")
}

fn escape_text(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_c14n(xml: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        canonicalize(doc.root(), &Algorithm::Inclusive11, None).unwrap()
    }

    fn subtree(xml: &str, name: &str, algorithm: &Algorithm) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let node = doc
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .unwrap();
        canonicalize(node, algorithm, None).unwrap()
    }

    /// W3C Canonical XML 1.0, section 3.1 (PIs, comments, outside the document element).
    #[test]
    fn pis_and_comments_outside_the_document_element() {
        let xml = "<?xml version=\"1.0\"?>\n\n<?xml-stylesheet   href=\"doc.xsl\"\n   type=\"text/xsl\"   ?>\n\n<doc>Hello, world!<!-- Comment 1 --></doc>\n\n<?pi-without-data     ?>\n\n<!-- Comment 2 -->\n\n<!-- Comment 3 -->";
        assert_eq!(
            doc_c14n(xml),
            "<?xml-stylesheet href=\"doc.xsl\"\n   type=\"text/xsl\"   ?>\n<doc>Hello, world!</doc>\n<?pi-without-data?>"
        );
    }

    /// W3C Canonical XML 1.0, section 3.3 (start and end tags), without the DTD defaults.
    #[test]
    fn start_and_end_tags() {
        let xml = r#"<doc>
   <e1   />
   <e2   ></e2>
   <e3   name = "elem3"   id="elem3"   />
   <e5 a:attr="out" b:attr="sorted" attr2="all" attr="I'm"
      xmlns:b="http://www.ietf.org"
      xmlns:a="http://www.w3.org"
      xmlns="http://example.org"/>
   <e6 xmlns="" xmlns:a="http://www.w3.org">
      <e7 xmlns="http://www.ietf.org">
         <e8 xmlns="" xmlns:a="http://www.w3.org">
            <e9 xmlns="" xmlns:a="http://www.ietf.org"/>
         </e8>
      </e7>
   </e6>
</doc>"#;
        assert_eq!(
            doc_c14n(xml),
            r#"<doc>
   <e1></e1>
   <e2></e2>
   <e3 id="elem3" name="elem3"></e3>
   <e5 xmlns="http://example.org" xmlns:a="http://www.w3.org" xmlns:b="http://www.ietf.org" attr="I'm" attr2="all" b:attr="sorted" a:attr="out"></e5>
   <e6 xmlns:a="http://www.w3.org">
      <e7 xmlns="http://www.ietf.org">
         <e8 xmlns="">
            <e9 xmlns:a="http://www.ietf.org"></e9>
         </e8>
      </e7>
   </e6>
</doc>"#
        );
    }

    /// W3C Canonical XML 1.0, section 3.4 (character modifications and references).
    #[test]
    fn character_escaping() {
        let xml = "<doc>\n   <text>First line&#x0d;&#10;Second line</text>\n   <value>&#x32;</value>\n   <compute><![CDATA[value>\"0\" && value<\"10\" ?\"valid\":\"error\"]]></compute>\n   <compute expr='value>\"0\" &amp;&amp; value&lt;\"10\" ?\"valid\":\"error\"'>valid</compute>\n   <norm attr=' &apos;   &#x20;&#13;&#xa;&#9;   &apos; '/>\n</doc>";
        assert_eq!(
            doc_c14n(xml),
            "<doc>\n   <text>First line&#xD;\nSecond line</text>\n   <value>2</value>\n   <compute>value&gt;\"0\" &amp;&amp; value&lt;\"10\" ?\"valid\":\"error\"</compute>\n   <compute expr=\"value>&quot;0&quot; &amp;&amp; value&lt;&quot;10&quot; ?&quot;valid&quot;:&quot;error&quot;\">valid</compute>\n   <norm attr=\" '    &#xD;&#xA;&#x9;   ' \"></norm>\n</doc>"
        );
    }

    #[test]
    fn line_ends_and_whitespace_in_attributes_are_normalised() {
        assert_eq!(
            doc_c14n("<a b=\"x\r\ny\tz\">1\r\n2\r3</a>"),
            "<a b=\"x y z\">1\n2\n3</a>"
        );
    }

    #[test]
    fn subtree_inherits_namespaces_in_scope_inclusive() {
        let xml = r#"<r xmlns="urn:d" xmlns:p="urn:p" xmlns:q="urn:q" xml:lang="en"><s:Sig xmlns:s="urn:s"><s:Info a="1"><s:M/></s:Info></s:Sig></r>"#;
        assert_eq!(
            subtree(xml, "Info", &Algorithm::Inclusive11),
            r#"<s:Info xmlns="urn:d" xmlns:p="urn:p" xmlns:q="urn:q" xmlns:s="urn:s" a="1" xml:lang="en"><s:M></s:M></s:Info>"#
        );
    }

    #[test]
    fn subtree_exclusive_writes_only_used_namespaces() {
        let xml = r#"<r xmlns="urn:d" xmlns:p="urn:p" xmlns:q="urn:q" xml:lang="en"><s:Sig xmlns:s="urn:s"><s:Info p:a="1"><s:M/><M/></s:Info></s:Sig></r>"#;
        assert_eq!(
            subtree(
                xml,
                "Info",
                &Algorithm::Exclusive {
                    inclusive_prefixes: vec![]
                }
            ),
            r#"<s:Info xmlns:p="urn:p" xmlns:s="urn:s" p:a="1"><s:M></s:M><M xmlns="urn:d"></M></s:Info>"#
        );
        assert_eq!(
            subtree(
                xml,
                "Info",
                &Algorithm::Exclusive {
                    inclusive_prefixes: vec!["q".into()]
                }
            ),
            r#"<s:Info xmlns:p="urn:p" xmlns:q="urn:q" xmlns:s="urn:s" p:a="1"><s:M></s:M><M xmlns="urn:d"></M></s:Info>"#
        );
    }

    #[test]
    fn same_uri_under_two_prefixes_keeps_each_name_as_written() {
        // NVIDIA's RIMs declare the SWID namespace both as default and as ns0.
        let xml = r#"<S xmlns="urn:swid" xmlns:ns0="urn:swid"><ns0:Meta v="1"/><Payload/></S>"#;
        assert_eq!(
            doc_c14n(xml),
            r#"<S xmlns="urn:swid" xmlns:ns0="urn:swid"><ns0:Meta v="1"></ns0:Meta><Payload></Payload></S>"#
        );
    }

    #[test]
    fn excluded_subtree_is_left_out() {
        let xml = "<a><b>1</b>\n<sig><x/></sig></a>";
        let doc = roxmltree::Document::parse(xml).unwrap();
        let sig = doc
            .descendants()
            .find(|n| n.has_tag_name("sig"))
            .unwrap()
            .id();
        assert_eq!(
            canonicalize(doc.root(), &Algorithm::Inclusive11, Some(sig)).unwrap(),
            "<a><b>1</b>\n</a>"
        );
    }

    #[test]
    fn xml_base_on_an_ancestor_is_refused() {
        let xml = r#"<r xml:base="http://x/"><i/></r>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        let i = doc.descendants().find(|n| n.has_tag_name("i")).unwrap();
        let err = canonicalize(i, &Algorithm::Inclusive11, None).unwrap_err();
        assert!(err.contains("xml:base"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let err = canonicalize(doc.root(), &Algorithm::Inclusive11, None).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn algorithm_uris() {
        assert_eq!(
            Algorithm::from_uri("http://www.w3.org/2006/12/xml-c14n11"),
            Some(Algorithm::Inclusive11)
        );
        assert_eq!(
            Algorithm::from_uri("http://www.w3.org/2006/12/xml-c14n11#WithComments"),
            None
        );
    }
}
