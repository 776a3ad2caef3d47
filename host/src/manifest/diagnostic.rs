//! Manifest problems with their position, rendered like compiler errors so an
//! operator sees every problem at once and where to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The text of one manifest file, shared by its diagnostics.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as the user gave it (or as derived from the pipeline manifest).
    pub path: PathBuf,
    /// Full text of the file.
    pub text: Arc<str>,
}

impl SourceFile {
    /// A source from its path and text.
    pub fn new(path: &Path, text: &str) -> Self {
        Self { path: path.to_owned(), text: Arc::from(text) }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One problem in a manifest.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The file it is in.
    pub source: SourceFile,
    /// Byte range it is about (empty when it concerns the whole file).
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `span` of `source`.
    pub fn new(source: &SourceFile, span: Range<usize>, message: impl Into<String>) -> Self {
        Self { source: source.clone(), span, message: message.into(), help: None }
    }

    /// Adds advice on how to fix it.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// 1-based line and column where it starts.
    pub fn line_col(&self) -> (usize, usize) {
        self.source.line_col(self.span.start)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, col) = self.line_col();
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "  --> {}:{line}:{col}", self.source.path.display())?;
        if let Some(text) = self.source.text.lines().nth(line - 1) {
            let gutter = " ".repeat(line.to_string().len());
            let width = self.span.len().max(1);
            let start = floor_char_boundary(&self.source.text, self.span.start);
            let end = floor_char_boundary(&self.source.text, (start + width).min(self.source.text.len()));
            let marked = self.source.text[start..end].split('\n').next().unwrap_or("").chars().count().max(1);
            writeln!(f, "{gutter} |")?;
            writeln!(f, "{line} | {text}")?;
            writeln!(f, "{gutter} | {}{}", " ".repeat(col - 1), "^".repeat(marked))?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a manifest and the plugin manifests it names.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Records a problem.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Records a `toml` parse or type error, at its span.
    pub fn push_toml(&mut self, source: &SourceFile, err: &toml::de::Error, fallback: Range<usize>) {
        let span = err.span().unwrap_or(fallback);
        self.push(Diagnostic::new(source, span, err.message().trim_end().to_owned()));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}
