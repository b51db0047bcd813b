//! The model card: a Markdown README with YAML front matter, as on the Hugging Face Hub.

use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use serde_yaml::{Mapping, Value};

/// Largest model card read, in bytes.
pub const MAX_CARD_BYTES: u64 = 1 << 20;

/// Why a model card could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CardError {
    /// The front matter is not a YAML mapping.
    #[error("model card front matter is not a YAML mapping: {0}")]
    FrontMatter(String),
    /// `---` opens the front matter but nothing closes it.
    #[error("model card front matter is not closed by a '---' line")]
    Unclosed,
}

/// A heading of the card's Markdown body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// 1 for `#`, 2 for `##`, …
    pub level: u8,
    /// The heading's text.
    pub title: String,
    /// Whether the section (with its subsections) has any text.
    pub has_content: bool,
}

/// A parsed model card.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCard {
    /// The YAML front matter (empty when the card has none).
    pub front_matter: Mapping,
    /// The body's headings, in order.
    pub sections: Vec<Section>,
}

impl ModelCard {
    /// Parses a card: optional `---`-delimited YAML front matter, then Markdown.
    pub fn parse(markdown: &str) -> Result<Self, CardError> {
        let text = markdown.strip_prefix('\u{feff}').unwrap_or(markdown);
        let (front_matter, body) = split_front_matter(text)?;
        let front_matter = match front_matter {
            None => Mapping::new(),
            Some(yaml) if yaml.trim().is_empty() => Mapping::new(),
            Some(yaml) => serde_yaml::from_str::<Mapping>(yaml)
                .map_err(|e| CardError::FrontMatter(e.to_string()))?,
        };
        Ok(Self {
            front_matter,
            sections: sections(body),
        })
    }

    /// The front-matter value at a dotted path (`co2_eq_emissions.hardware_used`), when it
    /// is present and not empty (null, `""`, `[]` and `{}` count as absent).
    pub fn field(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut v = self.front_matter.get(first)?;
        for p in parts {
            v = v.as_mapping()?.get(p)?;
        }
        (!is_empty(v)).then_some(v)
    }

    /// Whether a heading matches `title`: equal after normalisation (lowercase,
    /// punctuation as spaces), or starting with it as whole words ("Usage
    /// (Sentence-Transformers)" matches "usage"), and has content.
    pub fn has_section(&self, title: &str) -> bool {
        let want = normalise(title);
        self.sections.iter().any(|s| {
            let have = normalise(&s.title);
            s.has_content
                && (have == want
                    || have
                        .strip_prefix(&want)
                        .is_some_and(|rest| rest.starts_with(' ')))
        })
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

fn normalise(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits `---\nYAML\n---\nbody`; a card without a first `---` line has no front matter.
fn split_front_matter(text: &str) -> Result<(Option<&str>, &str), CardError> {
    let mut lines = text.split_inclusive('\n');
    let Some(first) = lines.next() else {
        return Ok((None, text));
    };
    if first.trim_end() != "---" {
        return Ok((None, text));
    }
    let start = first.len();
    let mut pos = start;
    for line in lines {
        if matches!(line.trim_end(), "---" | "...") {
            return Ok((Some(&text[start..pos]), &text[pos + line.len()..]));
        }
        pos += line.len();
    }
    Err(CardError::Unclosed)
}

/// The headings of a Markdown body, each with whether it or a subsection has text.
fn sections(body: &str) -> Vec<Section> {
    // (level, title, text bytes directly under the heading)
    let mut raw: Vec<(u8, String, usize)> = Vec::new();
    let mut in_heading = false;
    for event in Parser::new(body) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                in_heading = true;
                raw.push((level as u8, String::new(), 0));
            }
            Event::End(TagEnd::Heading(_)) => in_heading = false,
            Event::Text(t) | Event::Code(t) => {
                if let Some(last) = raw.last_mut() {
                    if in_heading {
                        last.1.push_str(&t);
                    } else {
                        last.2 += t.trim().len();
                    }
                }
            }
            _ => {}
        }
    }
    (0..raw.len())
        .map(|i| {
            let (level, ref title, own) = raw[i];
            let nested: usize = raw[i + 1..]
                .iter()
                .take_while(|(l, _, _)| *l > level)
                .map(|(_, _, n)| n)
                .sum();
            Section {
                level,
                title: title.trim().to_owned(),
                has_content: own + nested > 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "---\nlicense: apache-2.0\ndatasets:\n- s2orc\nempty: ''\nco2_eq_emissions:\n  emissions: 12\n---\n# Model\n\n## Usage (Sentence-Transformers)\n\n```python\nmodel.encode(x)\n```\n\n## Training procedure\n\n### Training data\n\nWe used s2orc.\n\n## Limitations\n";

    #[test]
    fn front_matter_and_sections() {
        let card = ModelCard::parse(CARD).unwrap();
        assert_eq!(
            card.field("license").and_then(Value::as_str),
            Some("apache-2.0")
        );
        assert!(card.field("datasets").is_some());
        assert!(card.field("empty").is_none());
        assert!(card.field("co2_eq_emissions.emissions").is_some());
        assert!(card.field("co2_eq_emissions.hardware_used").is_none());
        assert!(card.has_section("usage"));
        // Content comes from the subsection.
        assert!(card.has_section("Training Procedure"));
        assert!(card.has_section("training data"));
        // An empty section does not count.
        assert!(!card.has_section("limitations"));
        assert!(!card.has_section("use"));
    }

    #[test]
    fn cards_without_or_with_broken_front_matter() {
        let card = ModelCard::parse("# Title\n\ntext\n").unwrap();
        assert!(card.front_matter.is_empty());
        assert!(card.has_section("title"));
        assert_eq!(
            ModelCard::parse("---\nlicense: mit\n"),
            Err(CardError::Unclosed)
        );
        assert!(matches!(
            ModelCard::parse("---\n- a list\n---\n"),
            Err(CardError::FrontMatter(_))
        ));
    }
}
