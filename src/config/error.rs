//! The config layer's error type.
//!
//! A [`ConfigError`] says what failed, where (file, and line and column when the problem is at a
//! particular key or value) and what to do about it. Messages never contain secret values.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a config file. Columns count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number.
    pub column: usize,
}

impl Position {
    /// The position of byte offset `offset` in `text`. Offsets past the end point just after the
    /// last character.
    pub(crate) fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// Where a config problem was found: the file and, when the problem is at a particular key or
/// value, its position. Displays as `path:line:column` or just `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file, as given to `load` or `parse`.
    pub path: PathBuf,
    /// The offending key or value; `None` when the problem concerns the file as a whole (for
    /// example a required key or section that is missing).
    pub position: Option<Position>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// What to do about a config file that could not be read: for a permission problem, who this
/// process runs as and the command that lets that group read the file.
fn read_hint(path: &Path, cause: &io::Error) -> String {
    if cause.kind() != io::ErrorKind::PermissionDenied {
        return "check the path".into();
    }
    let me = crate::daemon::account::Account::current();
    let (user, group, path) = (&me.user, &me.group, path.display());
    format!(
        "this process runs as user {user} (group {group}), which may not read it; \
         as root: chgrp {group} {path} && chmod 0640 {path}"
    )
}

/// Why a hub or tunnel configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: cannot read the config file: {cause}; {}", path.display(), read_hint(path, cause))]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error (already part of the message).
        cause: io::Error,
    },
    /// The file was read but is not a valid configuration: bad TOML, an unknown key, a wrong
    /// type, a bad value, or a rule between keys that does not hold.
    #[error("{location}: {message}")]
    Invalid {
        /// File and position of the offending key or value.
        location: Location,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The config file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } => path,
            ConfigError::Invalid { location, .. } => &location.path,
        }
    }

    /// Line and column of the offending key or value, when the error has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => location.position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_this_process_may_not_read_names_its_user_and_group_and_the_fix() {
        let me = crate::daemon::account::Account::current();
        let err = ConfigError::Read {
            path: "/etc/tunnelize/tunnel-office.toml".into(),
            cause: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let text = err.to_string();
        assert!(
            text.contains(&format!("runs as user {} (group {})", me.user, me.group)),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "chgrp {} /etc/tunnelize/tunnel-office.toml && chmod 0640",
                me.group
            )),
            "{text}"
        );
        let missing = ConfigError::Read {
            path: "/nowhere.toml".into(),
            cause: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(missing.to_string().ends_with("check the path"), "{missing}");
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Position::of_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::of_offset(text, 6),
            Position { line: 2, column: 1 }
        );
        // "é" is two bytes; the `=` after "bé " is the fourth character of line 2.
        assert_eq!(
            Position::of_offset(text, 10),
            Position { line: 2, column: 4 }
        );
        assert_eq!(
            Position::of_offset(text, 999),
            Position { line: 3, column: 1 }
        );
    }

    #[test]
    fn display_names_file_line_and_column() {
        let err = ConfigError::Invalid {
            location: Location {
                path: PathBuf::from("/etc/tunnelize/hub.toml"),
                position: Some(Position {
                    line: 12,
                    column: 5,
                }),
            },
            message: "unknown key `foo`".into(),
        };
        assert_eq!(
            err.to_string(),
            "/etc/tunnelize/hub.toml:12:5: unknown key `foo`"
        );
        let err = ConfigError::Invalid {
            location: Location {
                path: PathBuf::from("hub.toml"),
                position: None,
            },
            message: "no keys".into(),
        };
        assert_eq!(err.to_string(), "hub.toml: no keys");
    }
}
