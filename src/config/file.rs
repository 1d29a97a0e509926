//! One loader for both daemons' config files: read the file, deserialize it into the file's
//! raw schema, check that into the typed config.
//!
//! A config type only says what its raw schema is and how it is checked ([`ConfigFile`]);
//! reading the file, syntax and schema errors, and the environment `key_env` reads are handled
//! here once, for the hub and the tunnel alike. This module knows no key of either file.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::error::ConfigError;
use super::source::{EnvLookup, Source};

/// A config file: its raw schema and the check that turns it into the config.
pub(super) trait ConfigFile: Sized {
    /// The file as written: `Raw*` structs that keep every value's span.
    type Raw: DeserializeOwned;

    /// Checks every value and the rules between keys, and converts `raw` into the config.
    fn check(raw: Self::Raw, src: &Source<'_>) -> Result<Self, ConfigError>;
}

/// Reads and checks the config file at `path`.
pub(super) fn load<C: ConfigFile>(path: &Path) -> Result<C, ConfigError> {
    let text = read_config(path)?;
    parse(&text, path)
}

/// Checks config `text`; `origin` names the file in errors and anchors relative paths, and
/// `key_env` variables are looked up in the process environment.
pub(super) fn parse<C: ConfigFile>(text: &str, origin: &Path) -> Result<C, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name))
}

/// [`parse`] with `key_env` variables looked up through `env`.
pub(super) fn parse_with_env<C: ConfigFile>(
    text: &str,
    origin: &Path,
    env: EnvLookup<'_>,
) -> Result<C, ConfigError> {
    let src = Source::new(text, origin, env);
    C::check(src.deserialize()?, &src)
}

/// The text of the config file at `path`.
pub(super) fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })
}
