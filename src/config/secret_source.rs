//! Where a secret comes from: inline (`key`), a file (`key_file`) or an environment variable
//! (`key_env`), so config files need not hold secrets. A password (`[cluster]`'s Redis
//! password) has the same three sources under its own names: `password`, `password_file`,
//! `password_env` ([`SecretNames`]).
//!
//! Exactly one source may be given per key. The value is checked with
//! [`check_secret`] and wrapped in a [`Secret`] at once; no error
//! message built here ever contains it.

use std::env::VarError;
use std::fs;

use toml::{Spanned, Value};

use super::error::ConfigError;
use super::source::{Source, Span};
use super::values::check_secret;
use crate::secret::{Secret, StoredKey};

/// What the keys of one secret are called, and what the secret is, in messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretNames {
    /// The secret inline: `key`.
    pub inline: &'static str,
    /// A file holding it: `key_file`.
    pub file: &'static str,
    /// An environment variable holding it: `key_env`.
    pub env: &'static str,
    /// What it is: "key".
    pub noun: &'static str,
    /// How to make one, completing "…; " in a message.
    pub make: &'static str,
}

impl SecretNames {
    /// A tunnel or monitoring key: `key`, `key_file`, `key_env`.
    pub(crate) const KEY: SecretNames = SecretNames {
        inline: "key",
        file: "key_file",
        env: "key_env",
        noun: "key",
        make: "generate a key with `tunnelize gen-key`",
    };
    /// A password: `password`, `password_file`, `password_env`.
    pub(crate) const PASSWORD: SecretNames = SecretNames {
        inline: "password",
        file: "password_file",
        env: "password_env",
        noun: "password",
        make: "write the password in UTF-8",
    };
}

/// The optional secret keys of one table, as written.
pub(crate) struct SecretFields<'r> {
    /// What they are called.
    pub names: SecretNames,
    /// `key`: the secret inline. Kept as a raw value so a wrong type is reported without
    /// echoing the value.
    pub key: Option<&'r Spanned<Value>>,
    /// `key_file`: path of a file holding the secret.
    pub key_file: Option<&'r Spanned<String>>,
    /// `key_env`: name of an environment variable holding the secret.
    pub key_env: Option<&'r Spanned<String>>,
    /// `key_hash` (tables of keys the hub checks against): the secret's digest. Always `None`
    /// for [`resolve_secret`], which reads a secret to send.
    pub key_hash: Option<&'r Spanned<String>>,
}

impl SecretFields<'_> {
    /// The keys that are set, in the order `key`, `key_file`, `key_env`, `key_hash`, with the
    /// spans of their values.
    pub(crate) fn given(&self) -> impl Iterator<Item = (&'static str, Span)> {
        let names = self.names;
        [
            self.key.map(|v| (names.inline, v.span())),
            self.key_file.map(|v| (names.file, v.span())),
            self.key_env.map(|v| (names.env, v.span())),
            self.key_hash.map(|v| ("key_hash", v.span())),
        ]
        .into_iter()
        .flatten()
    }
}

/// Reads the secret from whichever of `key`, `key_file`, `key_env` is set.
///
/// The value must have at least `min_len` characters. Returns `Ok(None)` when none is set. `place` completes messages like
/// ``"`key_file`{place}: …"``; it is empty at the top level, else like `` " in [[keys]] `alice`" ``.
pub(crate) fn resolve_secret(
    src: &Source<'_>,
    fields: &SecretFields<'_>,
    place: &str,
    min_len: usize,
) -> Result<Option<Secret>, ConfigError> {
    let names = fields.names;
    let given: Vec<(&str, Span)> = fields.given().collect();
    if let [(first, _), (second, span), ..] = given.as_slice() {
        return Err(src.error_at(
            span.clone(),
            format!(
                "`{first}` and `{second}` are both set{place}; keep exactly one of `{}`, \
                 `{}` and `{}`",
                names.inline, names.file, names.env
            ),
        ));
    }
    let (value, span, origin) = if let Some(key) = fields.key {
        match key.get_ref() {
            Value::String(value) => (value.clone(), key.span(), format!("`{}`", names.inline)),
            other => {
                return Err(src.error_at(
                    key.span(),
                    format!(
                        "`{}`{place}: expected a string in quotes, found {}",
                        names.inline,
                        other.type_str()
                    ),
                ));
            }
        }
    } else if let Some(file) = fields.key_file {
        let value = read_key_file(src, file, place, names)?;
        (
            value,
            file.span(),
            format!("{} file {:?}", names.noun, src.resolve_path(file.get_ref())),
        )
    } else if let Some(var) = fields.key_env {
        let value = read_key_env(src, var, place, names)?;
        (
            value,
            var.span(),
            format!("environment variable `{}`", var.get_ref()),
        )
    } else {
        return Ok(None);
    };
    match check_secret(&value, min_len) {
        Ok(()) => Ok(Some(Secret::new(value))),
        Err(problem) => Err(src.error_at(span, format!("{origin}{place}: {problem}"))),
    }
}

/// Reads a key the hub checks against: `key_hash` (a `sha256:` digest from `tunnelize
/// hash-key`), or else whichever of `key`, `key_file`, `key_env` is set, as [`resolve_secret`].
pub(crate) fn resolve_stored_key(
    src: &Source<'_>,
    fields: &SecretFields<'_>,
    place: &str,
    min_len: usize,
) -> Result<Option<StoredKey>, ConfigError> {
    let Some(hash) = fields.key_hash else {
        return Ok(resolve_secret(src, fields, place, min_len)?.map(StoredKey::from));
    };
    if let Some((other, _)) = fields.given().find(|(name, _)| *name != "key_hash") {
        return Err(src.error_at(
            hash.span(),
            format!(
                "`{other}` and `key_hash` are both set{place}; keep exactly one of `key`, \
                 `key_file`, `key_env` and `key_hash`"
            ),
        ));
    }
    StoredKey::from_hash(hash.get_ref())
        .map(Some)
        .map_err(|problem| src.error_at(hash.span(), format!("`key_hash`{place}: {problem}")))
}

fn read_key_file(
    src: &Source<'_>,
    file: &Spanned<String>,
    place: &str,
    names: SecretNames,
) -> Result<String, ConfigError> {
    let what = names.file;
    let path = src.non_empty_path(file, &format!("`{what}`{place}"))?;
    let text = fs::read_to_string(&path).map_err(|err| {
        src.error_at(
            file.span(),
            format!(
                "`{what}`{place}: cannot read {}: {err}; check the path (relative paths start \
                 at the config file's directory) and that this user may read it",
                path.display()
            ),
        )
    })?;
    Ok(text.trim_end().to_string())
}

fn read_key_env(
    src: &Source<'_>,
    var: &Spanned<String>,
    place: &str,
    names: SecretNames,
) -> Result<String, ConfigError> {
    let (what, noun) = (names.env, names.noun);
    let name = var.get_ref();
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(src.error_at(
            var.span(),
            format!("`{what}`{place}: {name:?} is not an environment variable name"),
        ));
    }
    match src.env_var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) => Err(src.error_at(
            var.span(),
            format!(
                "environment variable `{name}` (named by `{what}`{place}) is empty; set it to \
                 the {noun}"
            ),
        )),
        Err(VarError::NotPresent) => Err(src.error_at(
            var.span(),
            format!(
                "environment variable `{name}` (named by `{what}`{place}) is not set; set it in \
                 the daemon's environment (for systemd, `Environment=` or `EnvironmentFile=`) or \
                 use `{}`",
                names.file
            ),
        )),
        Err(VarError::NotUnicode(_)) => Err(src.error_at(
            var.span(),
            format!(
                "environment variable `{name}` (named by `{what}`{place}) is not valid UTF-8; \
                 {}",
                names.make
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawSecret {
        key: Option<Spanned<Value>>,
        key_file: Option<Spanned<String>>,
        key_env: Option<Spanned<String>>,
    }

    const KEY: &str = "0123456789abcdef-key";

    /// Resolves the secret of config `text` read from `origin`, with a fake environment in which
    /// only `TUNNELIZE_TEST_SET` and `TUNNELIZE_TEST_EMPTY` are set.
    fn resolve(text: &str, origin: &Path) -> Result<Option<Secret>, String> {
        let env = |name: &str| match name {
            "TUNNELIZE_TEST_SET" => Ok(KEY.to_string()),
            "TUNNELIZE_TEST_EMPTY" => Ok(String::new()),
            _ => Err(VarError::NotPresent),
        };
        let src = Source::new(text, origin, &env);
        let raw: RawSecret = src.deserialize().map_err(|err| err.to_string())?;
        let fields = SecretFields {
            names: SecretNames::KEY,
            key: raw.key.as_ref(),
            key_file: raw.key_file.as_ref(),
            key_env: raw.key_env.as_ref(),
            key_hash: None,
        };
        resolve_secret(&src, &fields, "", 16).map_err(|err| err.to_string())
    }

    fn resolve_here(text: &str) -> Result<Option<Secret>, String> {
        resolve(text, Path::new("/etc/tunnelize/tunnel.toml"))
    }

    #[test]
    fn no_source_means_no_secret() {
        assert_eq!(resolve_here(""), Ok(None));
    }

    #[test]
    fn inline_keys_are_taken_as_written() {
        assert_eq!(
            resolve_here(&format!("key = \"{KEY}\"")),
            Ok(Some(Secret::new(KEY)))
        );
    }

    #[test]
    fn key_files_are_relative_to_the_config_and_lose_trailing_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/tunnel.key"), format!("{KEY}\r\n\n")).unwrap();
        let origin = dir.path().join("tunnel.toml");
        let secret = resolve("key_file = \"keys/tunnel.key\"", &origin).unwrap();
        assert_eq!(secret, Some(Secret::new(KEY)));
        let absolute = dir.path().join("keys/tunnel.key");
        let text = format!("key_file = {:?}", absolute.display().to_string());
        assert_eq!(
            resolve(&text, Path::new("/nowhere/tunnel.toml")).unwrap(),
            Some(Secret::new(KEY))
        );
    }

    #[test]
    fn an_unreadable_key_file_is_named_with_the_config_line() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("tunnel.toml");
        let err = resolve("\nkey_file = \"missing.key\"", &origin).unwrap_err();
        let expected_start = format!(
            "{}:2:12: `key_file`: cannot read {}: ",
            origin.display(),
            dir.path().join("missing.key").display()
        );
        assert!(err.starts_with(&expected_start), "{err}");
        assert!(err.contains("check the path"), "{err}");
    }

    #[test]
    fn an_empty_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.key"), "\n").unwrap();
        let err = resolve("key_file = \"empty.key\"", &dir.path().join("t.toml")).unwrap_err();
        assert!(
            err.contains("empty.key\": the key is empty; generate one"),
            "{err}"
        );
    }

    #[test]
    fn key_env_reads_the_named_variable() {
        let secret = resolve_here("key_env = \"TUNNELIZE_TEST_SET\"").unwrap();
        assert_eq!(secret, Some(Secret::new(KEY)));
    }

    #[test]
    fn unset_or_empty_key_env_variables_are_named() {
        let err = resolve_here("key_env = \"TUNNELIZE_TEST_UNSET\"").unwrap_err();
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:1:11: environment variable `TUNNELIZE_TEST_UNSET` (named by `key_env`) is not set"), "{err}");
        let err = resolve_here("key_env = \"TUNNELIZE_TEST_EMPTY\"").unwrap_err();
        assert!(
            err.contains(
                "environment variable `TUNNELIZE_TEST_EMPTY` (named by `key_env`) is empty"
            ),
            "{err}"
        );
        let err = resolve_here("key_env = \"\"").unwrap_err();
        assert!(err.contains("is not an environment variable name"), "{err}");
    }

    #[test]
    fn only_one_source_may_be_given() {
        let err = resolve_here(&format!(
            "key = \"{KEY}\"\nkey_file = \"k\"\nkey_env = \"E\""
        ))
        .unwrap_err();
        assert!(err.starts_with("/etc/tunnelize/tunnel.toml:2:12: `key` and `key_file` are both set; keep exactly one of `key`, `key_file` and `key_env`"), "{err}");
        let err = resolve_here("key_file = \"k\"\nkey_env = \"E\"").unwrap_err();
        assert!(
            err.contains("`key_file` and `key_env` are both set"),
            "{err}"
        );
    }

    #[test]
    fn bad_inline_keys_are_refused_without_echoing_them() {
        let err = resolve_here("key = \"\"").unwrap_err();
        assert!(err.contains("`key`: the key is empty"), "{err}");
        let err = resolve_here("key = \"tiny-secret\"").unwrap_err();
        assert!(
            err.contains("shorter than 16 characters") && !err.contains("tiny-secret"),
            "{err}"
        );
        let err = resolve_here("key = 98765432109876543").unwrap_err();
        assert!(
            err.contains("`key`: expected a string in quotes, found integer"),
            "{err}"
        );
        assert!(!err.contains("98765432109876543"), "{err}");
    }
}
