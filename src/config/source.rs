//! One config file being parsed: its text, its path, and how to turn spans into errors.
//!
//! [`Source`] deserializes the raw TOML and rewrites `toml`'s errors into [`ConfigError`]s that
//! name the file, line, column and the key path (`unknown key `foo` in [services.ssh]`). It also
//! resolves relative paths against the config file's directory and looks up environment
//! variables through an injectable function, so tests need not touch the process environment.
//! It knows nothing about hub or tunnel keys.

use std::env::VarError;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Location, Position};

/// A byte range in the config text, as reported by `toml::Spanned::span`.
pub(crate) type Span = Range<usize>;

/// Looks up an environment variable; `std::env::var` outside tests.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// A config file's text and origin, plus the environment used for `key_env`.
pub(crate) struct Source<'a> {
    text: &'a str,
    origin: &'a Path,
    env: EnvLookup<'a>,
}

impl<'a> Source<'a> {
    /// The file this text comes from (or stands in for).
    pub(crate) fn origin(&self) -> &Path {
        self.origin
    }

    /// A source for `text`, read from (or standing in for) the file `origin`.
    pub(crate) fn new(text: &'a str, origin: &'a Path, env: EnvLookup<'a>) -> Self {
        Source { text, origin, env }
    }

    /// An error at the key or value covering `span`.
    pub(crate) fn error_at(&self, span: Span, message: impl Into<String>) -> ConfigError {
        self.error(Some(Position::of_offset(self.text, span.start)), message)
    }

    /// An error about the file as a whole (for example a missing section).
    pub(crate) fn error_in_file(&self, message: impl Into<String>) -> ConfigError {
        self.error(None, message)
    }

    fn error(&self, position: Option<Position>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: Location {
                path: self.origin.to_path_buf(),
                position,
            },
            message: message.into(),
        }
    }

    /// Checks `value` with `check`; a problem it finds becomes an error at the value, after
    /// `what`: the key as the user knows it, like ``"`links`"`` or ``"`port` in [[proxies]] `ssh`"``.
    pub(crate) fn check<V, T>(
        &self,
        value: &Spanned<V>,
        what: &str,
        check: impl FnOnce(&V) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        check(value.get_ref())
            .map_err(|problem| self.error_at(value.span(), format!("{what}: {problem}")))
    }

    /// [`Source::check`] for an optional key: `None` when it is absent.
    pub(crate) fn check_opt<V, T>(
        &self,
        value: Option<&Spanned<V>>,
        what: &str,
        check: impl FnOnce(&V) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        value
            .map(|value| self.check(value, what, check))
            .transpose()
    }

    /// [`Source::check`] for an optional key with a default: `default` when it is absent.
    pub(crate) fn check_or<V, T>(
        &self,
        value: Option<&Spanned<V>>,
        what: &str,
        default: T,
        check: impl FnOnce(&V) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.check_opt(value, what, check)?.unwrap_or(default))
    }

    /// A path key that must not be empty, resolved against the config file's directory; `what`
    /// names the key as in [`Source::check`].
    pub(crate) fn non_empty_path(
        &self,
        path: &Spanned<String>,
        what: &str,
    ) -> Result<PathBuf, ConfigError> {
        if path.get_ref().is_empty() {
            return Err(self.error_at(path.span(), format!("{what} is empty; give a path")));
        }
        Ok(self.resolve_path(path.get_ref()))
    }

    /// `path` as written in the config, made absolute relative to the config file's directory.
    pub(crate) fn resolve_path(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.origin.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The value of environment variable `name`.
    pub(crate) fn env_var(&self, name: &str) -> Result<String, VarError> {
        (self.env)(name)
    }

    /// The top-level keys of the document, or a syntax error.
    pub(crate) fn top_level_keys(&self) -> Result<Vec<String>, ConfigError> {
        let doc = DeTable::parse(self.text).map_err(|err| self.syntax_error(&err))?;
        Ok(doc
            .get_ref()
            .keys()
            .map(|key| key.get_ref().to_string())
            .collect())
    }

    /// Deserializes the whole file into `T`, turning `toml` errors into [`ConfigError`]s.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let doc = DeTable::parse(self.text).map_err(|err| self.syntax_error(&err))?;
        toml::from_str(self.text).map_err(|err| self.schema_error(&err, doc.get_ref()))
    }

    /// A TOML syntax error (the text is not TOML at all, or repeats a key).
    fn syntax_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let message = match &span {
            Some(span) if err.message() == "duplicate key" => format!(
                "duplicate key `{}`: a key may appear only once per table; remove one of them",
                self.text.get(span.clone()).unwrap_or("?").trim()
            ),
            _ => format!("invalid TOML: {}", err.message()),
        };
        let position = span.map(|span| Position::of_offset(self.text, span.start));
        self.error(position, message)
    }

    /// Valid TOML that does not fit the schema: unknown key, missing key, wrong type, bad value.
    fn schema_error(&self, err: &toml::de::Error, doc: &DeTable<'_>) -> ConfigError {
        let message = err.message();
        // `toml` reports a missing top-level key with an empty span at offset 0; that is not a
        // position in the file.
        let span = err.span().filter(|span| !span.is_empty());
        let path = span
            .as_ref()
            .and_then(|span| deepest_path_in_table(doc, span.start, &[]))
            .unwrap_or_default();
        let message = if let Some(rest) = message.strip_prefix("unknown field ") {
            let (key, expected) = match rest.split_once("`, ") {
                Some((key, expected)) => (format!("{key}`"), expected),
                None => (rest.to_string(), ""),
            };
            let parent = path.split_last().map_or(&[][..], |(_, parent)| parent);
            let hint = if expected.is_empty() {
                String::new()
            } else {
                format!("; {expected}")
            };
            format!("unknown key {key} {}{hint}", table_phrase(parent))
        } else if let Some(key) = message.strip_prefix("missing field ") {
            format!("missing required key {key} {}; add it", table_phrase(&path))
        } else {
            match path.split_last() {
                Some((Segment::Key(key), [])) => format!("`{key}`: {message}"),
                Some((Segment::Key(key), parent)) => {
                    format!("`{key}` {}: {message}", table_phrase(parent))
                }
                _ => message.to_string(),
            }
        };
        self.error(
            span.map(|span| Position::of_offset(self.text, span.start)),
            message,
        )
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Says where the table at `path` is, the way the user wrote it: `in [services.ssh]`,
/// `in [[keys]] entry 2`, `at the top level`.
fn table_phrase(path: &[Segment]) -> String {
    if path.is_empty() {
        return "at the top level".to_string();
    }
    let mut name = String::new();
    for (i, segment) in path.iter().enumerate() {
        match segment {
            Segment::Key(key) if i == 0 => name.push_str(key),
            Segment::Key(key) => {
                name.push('.');
                name.push_str(key);
            }
            Segment::Index(index) => name.push_str(&format!("[{index}]")),
        }
    }
    match path {
        [Segment::Key(array), Segment::Index(index)] => {
            format!("in [[{array}]] entry {}", index + 1)
        }
        _ => format!("in [{name}]"),
    }
}

/// The longest key path whose key or value span contains `offset`.
///
/// Tables opened by a `[header]` have the header as their span, so their contents are searched
/// whether or not the table's own span contains `offset`.
fn deepest_path_in_table(
    table: &DeTable<'_>,
    offset: usize,
    prefix: &[Segment],
) -> Option<Vec<Segment>> {
    let mut best: Option<Vec<Segment>> = None;
    for (key, value) in table.iter() {
        let mut path = prefix.to_vec();
        path.push(Segment::Key(key.get_ref().to_string()));
        let here = key.span().contains(&offset) || value.span().contains(&offset);
        let found = deepest_path_in_value(value.get_ref(), offset, &path).or(here.then_some(path));
        best = longest(best, found);
    }
    best
}

fn deepest_path_in_value(
    value: &DeValue<'_>,
    offset: usize,
    prefix: &[Segment],
) -> Option<Vec<Segment>> {
    match value {
        DeValue::Table(table) => deepest_path_in_table(table, offset, prefix),
        DeValue::Array(items) => {
            let mut best = None;
            for (index, item) in items.iter().enumerate() {
                let mut path = prefix.to_vec();
                path.push(Segment::Index(index));
                let here = item.span().contains(&offset);
                let found =
                    deepest_path_in_value(item.get_ref(), offset, &path).or(here.then_some(path));
                best = longest(best, found);
            }
            best
        }
        _ => None,
    }
}

fn longest(a: Option<Vec<Segment>>, b: Option<Vec<Segment>>) -> Option<Vec<Segment>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.len() > a.len() { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_at(text: &str, needle: &str) -> Option<Vec<Segment>> {
        let doc = DeTable::parse(text).ok()?;
        let offset = text.find(needle)?;
        deepest_path_in_table(doc.get_ref(), offset, &[])
    }

    fn key(name: &str) -> Segment {
        Segment::Key(name.to_string())
    }

    #[test]
    fn finds_keys_inside_header_tables_and_arrays_of_tables() {
        let text = "a = 1\n[services.ssh]\nkind = \"tcp\"\nfoo = 2\n[[keys]]\nname = \"x\"\n\
                    [[keys]]\nname = \"y\"\n";
        assert_eq!(
            path_at(text, "foo"),
            Some(vec![key("services"), key("ssh"), key("foo")])
        );
        assert_eq!(
            path_at(text, "\"y\""),
            Some(vec![key("keys"), Segment::Index(1), key("name")])
        );
        assert_eq!(
            path_at(text, "[services.ssh]"),
            Some(vec![key("services"), key("ssh")])
        );
        assert_eq!(path_at(text, "a ="), Some(vec![key("a")]));
    }

    #[test]
    fn finds_keys_inside_inline_tables() {
        let text = "services = { ssh = { kind = \"tcp\", zz = 1 } }\n";
        assert_eq!(
            path_at(text, "zz"),
            Some(vec![key("services"), key("ssh"), key("zz")])
        );
    }

    #[test]
    fn a_checked_value_points_at_its_line_and_names_its_key() {
        #[derive(serde::Deserialize)]
        struct Raw {
            a: Spanned<i64>,
            b: Option<Spanned<i64>>,
        }
        let no_env = |_: &str| Err(VarError::NotPresent);
        let src = Source::new(
            "\na = 7
",
            Path::new("/etc/x.toml"),
            &no_env,
        );
        let raw: Raw = src.deserialize().unwrap();
        let positive = |n: &i64| {
            if *n > 0 {
                Ok(*n)
            } else {
                Err(format!("{n} is not positive"))
            }
        };
        assert_eq!(src.check(&raw.a, "`a`", positive).unwrap(), 7);
        assert_eq!(
            src.check_opt(raw.b.as_ref(), "`b`", positive).unwrap(),
            None
        );
        let err = src
            .check(&raw.a, "`a` in [t]", |n| {
                Err::<(), _>(format!("{n} is wrong"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "/etc/x.toml:2:5: `a` in [t]: 7 is wrong");
    }

    #[test]
    fn table_phrases_read_like_the_toml_that_opened_them() {
        assert_eq!(table_phrase(&[]), "at the top level");
        assert_eq!(
            table_phrase(&[key("services"), key("ssh")]),
            "in [services.ssh]"
        );
        assert_eq!(
            table_phrase(&[key("keys"), Segment::Index(0)]),
            "in [[keys]] entry 1"
        );
    }
}
