//! Errors that point into the config file.
//!
//! Every complaint about a config names the file, line and column, says what is
//! wrong and, where we can tell, what would be right. The same type carries
//! complaints found later, on the host (an interface that does not exist), so
//! a user always sees one format whichever stage refused the file.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};

/// The text of a config file and the name it is shown under.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<Source> {
        Arc::new(Source {
            name: name.into(),
            text: text.into(),
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

/// One complaint: a message, where it applies and an optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// Byte range in the source; `None` for complaints about the file as a whole.
    pub span: Option<Range<usize>>,
    /// Short text under the carets.
    pub label: Option<String>,
    /// An earlier place that the complaint refers to (the first of two duplicates).
    pub related: Option<(Range<usize>, String)>,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span: None,
            label: None,
            related: None,
            help: None,
        }
    }

    pub fn at(mut self, span: Range<usize>) -> Diagnostic {
        self.span = Some(span);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn related(mut self, span: Range<usize>, label: impl Into<String>) -> Diagnostic {
        self.related = Some((span, label.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// All the complaints about one file. Rendered like rustc's errors:
///
/// ```text
/// error: backend 10.1.0.5:80 is outside the LAN subnet 10.0.0.0/24
///  --> gatehouse.toml:14:13
/// ```
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub source: Arc<Source>,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(source: Arc<Source>, items: Vec<Diagnostic>) -> Diagnostics {
        Diagnostics { source, items }
    }

    /// `file:line:column` of the first complaint, the form editors jump to.
    pub fn location(&self, index: usize) -> Option<String> {
        let span = self.items.get(index)?.span.as_ref()?;
        let (line, col) = self.source.line_col(span.start);
        Some(format!("{}:{line}:{col}", self.source.name))
    }

    /// Render every complaint, in color when `color` is set.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for diagnostic in &self.items {
            out.push_str(&self.render_one(&renderer, diagnostic));
            out.push('\n');
        }
        let count = self.items.len();
        if count > 1 {
            out.push_str(&format!(
                "error: {} was rejected ({count} errors)\n",
                self.source.name
            ));
        }
        out
    }

    fn render_one(&self, renderer: &Renderer, diagnostic: &Diagnostic) -> String {
        let title = Level::ERROR.primary_title(diagnostic.message.as_str());
        let mut group = match &diagnostic.span {
            Some(span) => {
                let mut snippet = Snippet::source(self.source.text.as_str())
                    .path(self.source.name.as_str())
                    .annotation(
                        AnnotationKind::Primary
                            .span(clamp(span.clone(), &self.source.text))
                            .label(diagnostic.label.as_deref()),
                    );
                if let Some((related, label)) = &diagnostic.related {
                    snippet = snippet.annotation(
                        AnnotationKind::Context
                            .span(clamp(related.clone(), &self.source.text))
                            .label(Some(label.as_str())),
                    );
                }
                title.element(snippet)
            }
            None => title.element(Level::NOTE.message(format!("in {}", self.source.name))),
        };
        if let Some(help) = &diagnostic.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        renderer.render(&[group]).to_string()
    }
}

/// Spans from the TOML parser can point one past the end (an unterminated
/// table); the renderer wants them inside the text.
fn clamp(span: Range<usize>, text: &str) -> Range<usize> {
    let end = span.end.min(text.len());
    let start = span.start.min(end);
    start..end
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render(false).trim_end())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let source = Source::new("f.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(source.line_col(0), (1, 1));
        assert_eq!(source.line_col(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters
        assert_eq!(source.line_col(12), (2, 6));
    }

    #[test]
    fn render_names_file_line_and_column_and_help() {
        let source = Source::new("farm.toml", "[gateway]\nwan = \"eth0\"\n");
        let diags = Diagnostics::new(
            source,
            vec![
                Diagnostic::new("bad interface")
                    .at(16..22)
                    .label("here")
                    .help("use another"),
            ],
        );
        let text = diags.render(false);
        assert!(text.contains("error: bad interface"), "{text}");
        assert!(text.contains("farm.toml:2:7"), "{text}");
        assert!(text.contains("help: use another"), "{text}");
        assert_eq!(diags.location(0).as_deref(), Some("farm.toml:2:7"));
    }
}
