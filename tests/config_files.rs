//! Every shipped config file parses, and every known-bad config fails the way it says it will.
//!
//! `etc/tunnelize/*.toml` are the examples operators copy: each must load, and each must document
//! every key the schema accepts. `tests/fixtures/bad-config/*.toml` are invalid configs: the
//! first line is `# expect: <part of the error message>`, and the line the error must point at
//! carries the comment `# <- error here`. A fixture without that marker describes a problem
//! with the file as a whole, so its error must name the file without a line.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use tunnelize::config::{HubConfig, TunnelConfig, load_any};

/// Marks the line a fixture's error must point at.
const ERROR_MARKER: &str = "# <- error here";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The `.toml` files directly in `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn example_configs_load() {
    let hub = repo_path("etc/tunnelize/hub.toml");
    let tunnel = repo_path("etc/tunnelize/tunnel.toml");
    // The example hub ships without a key, so an unedited install fails closed with the fix;
    // with its commented entry switched on it loads.
    let err = load_any(&hub).expect_err("the example hub has no key");
    assert!(
        err.to_string().contains("no tunnel keys are configured")
            && err.to_string().contains("[[keys]]"),
        "{err}"
    );
    let (text, origin) = common::example_hub_toml_with_a_key();
    if let Err(err) = tunnelize::config::HubConfig::parse(&text, &origin) {
        panic!("the example hub with a key does not load: {err}");
    }
    // The example tunnel's key is a placeholder, refused until it is replaced; with a real
    // key in its place it loads.
    let err = load_any(&tunnel).expect_err("the example tunnel's key is a placeholder");
    assert!(
        err.to_string().contains("placeholder") && err.to_string().contains("tunnel.toml:31"),
        "{err}"
    );
    let (filled, origin) = common::example_tunnel_toml_with_a_key();
    if let Err(err) = tunnelize::config::TunnelConfig::parse(&filled, &origin) {
        panic!("the example tunnel with a key does not load: {err}");
    }
    for path in toml_files(&repo_path("etc/tunnelize")) {
        if path == hub || path == tunnel {
            continue;
        }
        if let Err(err) = load_any(&path) {
            panic!("example config does not load: {err}");
        }
    }
}

/// The keys an error lists after "expected one of" / "expected", in order.
fn expected_keys(message: &str) -> Vec<String> {
    let (_, list) = message
        .split_once("; expected")
        .expect("message lists the expected keys");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every key the schema accepts in each table is mentioned in the example file.
///
/// The accepted keys come from the "unknown key" error itself, so this follows the schema
/// without a second list to maintain.
#[test]
fn example_configs_document_every_key() {
    let origin = Path::new("probe.toml");
    let keys = "[[keys]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\n";
    let proxy = "[[proxies]]\nname = \"a\"\nservice = \"a\"\ntarget = \"h:1\"\n";
    let hub_probes = [
        format!("zz_unknown = 1\n{keys}"),
        format!("{keys}zz_unknown = 1\n"),
        format!("{keys}[tls]\nzz_unknown = 1\n"),
        format!("{keys}[services.x]\nzz_unknown = 1\n"),
        format!("{keys}[admin]\nzz_unknown = 1\n"),
        format!("{keys}[limits]\nzz_unknown = 1\n"),
    ];
    let tunnel_probes = [
        format!("hub_address = \"h:1\"\nzz_unknown = 1\n{proxy}"),
        format!("hub_address = \"h:1\"\n{proxy}zz_unknown = 1\n"),
        format!("hub_address = \"h:1\"\n{proxy}[admin]\nzz_unknown = 1\n"),
    ];
    let check = |example: &str, message: String| {
        let text = fs::read_to_string(repo_path(example)).expect("example config is readable");
        for key in expected_keys(&message) {
            // A key is documented as `key = ...`; a table as `[key]`, `[key.NAME]` or `[[key]]`.
            let documented =
                text.contains(&format!("{key} =")) || text.contains(&format!("[{key}"));
            assert!(documented, "{example} does not document `{key}`");
        }
    };
    for probe in hub_probes {
        let err = HubConfig::parse(&probe, origin).expect_err("probe has an unknown key");
        check("etc/tunnelize/hub.toml", err.to_string());
    }
    for probe in tunnel_probes {
        let err = TunnelConfig::parse(&probe, origin).expect_err("probe has an unknown key");
        check("etc/tunnelize/tunnel.toml", err.to_string());
    }
}

/// What a fixture promises about its error.
struct Expectation {
    substring: String,
    /// 1-based line the error must point at; `None` for whole-file errors.
    line: Option<usize>,
}

fn expectation(path: &Path, text: &str) -> Result<Expectation, String> {
    let first = text.lines().next().unwrap_or_default();
    let substring = first
        .strip_prefix("# expect: ")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "{}: first line must be `# expect: <substring>`",
                path.display()
            )
        })?;
    let mut marked = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(ERROR_MARKER));
    let line = marked.next().map(|(index, _)| index + 1);
    if marked.next().is_some() {
        return Err(format!(
            "{}: more than one `{ERROR_MARKER}` line",
            path.display()
        ));
    }
    Ok(Expectation {
        substring: substring.to_string(),
        line,
    })
}

#[test]
fn bad_configs_fail_with_the_expected_error_at_the_marked_line() {
    let files = toml_files(&repo_path("tests/fixtures/bad-config"));
    assert!(!files.is_empty(), "no fixtures found");
    let mut failures = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("fixture is readable");
        let expected = match expectation(path, &text) {
            Ok(expected) => expected,
            Err(problem) => {
                failures.push(problem);
                continue;
            }
        };
        let message = match load_any(path) {
            Ok(config) => {
                failures.push(format!(
                    "{}: loaded, but should fail: {config:?}",
                    path.display()
                ));
                continue;
            }
            Err(err) => err.to_string(),
        };
        if !message.contains(&expected.substring) {
            failures.push(format!(
                "{}: error does not contain {:?}:\n  {message}",
                path.display(),
                expected.substring
            ));
        }
        let location_ok = match expected.line {
            Some(line) => message.starts_with(&format!("{}:{line}:", path.display())),
            None => message.starts_with(&format!("{}: ", path.display())),
        };
        if !location_ok {
            let want = expected
                .line
                .map_or("no line".to_string(), |line| format!("line {line}"));
            failures.push(format!(
                "{}: error should point at {want}:\n  {message}",
                path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sets an environment variable for this test process.
///
/// `std::env::set_var` is `unsafe` in edition 2024 because on Unix, writing the environment
/// while another thread reads it *without Rust's std* (for example libc's `getenv` inside
/// `getaddrinfo`) is undefined behaviour. Rust's own `env::var`/`set_var` take a process-wide
/// lock, so they are safe with each other. This integration-test binary only runs config tests,
/// which read the environment through `std::env::var` alone and never resolve host names or call
/// C code that reads it; and each test uses its own variable name, so tests running in parallel
/// do not see each other's values. The unit tests in `src/config` inject a fake environment
/// instead, so the library itself never needs this.
fn set_env_for_this_test(name: &str, value: &str) {
    // SAFETY: see above; no thread in this process reads the environment outside std.
    unsafe { std::env::set_var(name, value) };
}

#[test]
fn key_env_reads_the_real_process_environment() {
    let name = "TUNNELIZE_CONFIG_FILES_TEST_KEY_ENV";
    set_env_for_this_test(name, "env-key-0123456789abcdef");
    let text = format!(
        "hub_address = \"hub.example.com:7700\"\nkey_env = \"{name}\"\n\
         [[proxies]]\nname = \"ssh\"\nservice = \"ssh\"\ntarget = \"127.0.0.1:22\"\n"
    );
    let config = TunnelConfig::parse(&text, Path::new("tunnel.toml")).expect("config is valid");
    assert_eq!(
        config.key.as_ref().map(|key| key.expose()),
        Some("env-key-0123456789abcdef")
    );
    assert!(!format!("{config:?}").contains("env-key-0123456789abcdef"));
}
