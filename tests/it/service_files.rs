//! The service definitions operators install: the systemd units, sysusers and tmpfiles entries
//! in `systemd/`, and the launchd plists in `launchd/`. Each test reads the shipped files and
//! checks one thing an operator relies on. Two tests, ignored unless asked for (`--ignored`) as
//! they need `systemd-analyze`, also run the units through `systemd-analyze verify` and
//! `systemd-analyze security`.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use plist::{Dictionary, Value};
use tunnelize::config::{HubConfig, TunnelConfig};

/// The unit files `systemd/` must hold: file name, subcommand, config file passed with `-c`.
const UNITS: [(&str, &str, &str); 3] = [
    ("tunnelize-hub.service", "hub", "/etc/tunnelize/hub.toml"),
    (
        "tunnelize-tunnel.service",
        "tunnel",
        "/etc/tunnelize/tunnel.toml",
    ),
    (
        "tunnelize-tunnel@.service",
        "tunnel",
        "/etc/tunnelize/tunnel-%i.toml",
    ),
];

/// The plists `launchd/` must hold, by subcommand.
const PLISTS: [&str; 2] = ["hub", "tunnel"];

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = project().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// File names in `dir` (relative to the project) ending with `suffix`, sorted.
fn files_ending(dir: &str, suffix: &str) -> Vec<String> {
    let path = project().join(dir);
    let mut names: Vec<String> = fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// A small reader for systemd unit files: `[Section]` headers, `Key=Value` lines (a key may be
// repeated), `#`/`;` comments, and lines continued with a trailing backslash.

struct Unit {
    name: String,
    entries: Vec<Entry>,
}

struct Entry {
    section: String,
    key: String,
    value: String,
}

impl Unit {
    fn parse(name: &str, text: &str) -> Result<Unit, String> {
        let mut entries = Vec::new();
        let mut section: Option<String> = None;
        let mut pending = String::new();
        let mut first_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_empty() {
                first_line = index + 1;
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let logical = std::mem::take(&mut pending);
            if let Some(header) = logical.strip_prefix('[') {
                let header = header
                    .strip_suffix(']')
                    .ok_or_else(|| format!("{name}:{first_line}: unclosed section header"))?;
                section = Some(header.to_owned());
                continue;
            }
            let (key, value) = logical
                .split_once('=')
                .ok_or_else(|| format!("{name}:{first_line}: not a Key=Value line: {logical}"))?;
            let section = section
                .clone()
                .ok_or_else(|| format!("{name}:{first_line}: {key} before any [Section]"))?;
            entries.push(Entry {
                section,
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            });
        }
        if !pending.is_empty() {
            return Err(format!("{name}:{first_line}: continuation at end of file"));
        }
        Ok(Unit {
            name: name.to_owned(),
            entries,
        })
    }

    fn load(file: &str) -> Unit {
        Unit::parse(file, &read(&format!("systemd/{file}"))).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every value assigned to `key` in `section`, in file order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.section == section && e.key == key)
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The value in force for a single-valued key: the last assignment.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    /// Like [`Unit::get`], failing the test when the key is missing.
    fn expect(&self, section: &str, key: &str) -> &str {
        self.get(section, key)
            .unwrap_or_else(|| panic!("{}: no {key}= in [{section}]", self.name))
    }

    /// The words of a list-valued key across its assignments; an empty assignment resets it.
    fn words(&self, section: &str, key: &str) -> Vec<&str> {
        let mut words = Vec::new();
        for value in self.all(section, key) {
            if value.is_empty() {
                words.clear();
            }
            words.extend(value.split_whitespace());
        }
        words
    }

    fn is_tunnel(&self) -> bool {
        self.name.starts_with("tunnelize-tunnel")
    }
}

fn units() -> Vec<Unit> {
    UNITS.iter().map(|(file, _, _)| Unit::load(file)).collect()
}

#[test]
fn unit_reader_keeps_sections_repeated_keys_and_continued_lines() {
    let unit = Unit::parse(
        "t.service",
        "# comment\n[Unit]\nDescription = a b\n\n[Service]\n; other comment\n\
         SystemCallFilter=@system-service\nSystemCallFilter=~@privileged \\\n  @resources\n\
         CapabilityBoundingSet=CAP_A\nCapabilityBoundingSet=\n",
    )
    .expect("parses");
    assert_eq!(unit.get("Unit", "Description"), Some("a b"));
    assert_eq!(unit.get("Service", "Description"), None);
    assert_eq!(
        unit.all("Service", "SystemCallFilter"),
        ["@system-service", "~@privileged  @resources"]
    );
    assert!(unit.words("Service", "CapabilityBoundingSet").is_empty());
    assert!(Unit::parse("t.service", "Key=before-section\n").is_err());
    assert!(Unit::parse("t.service", "[Service]\nno equals sign\n").is_err());
}

// ---------------------------------------------------------------------------------------------
// systemd units

#[test]
fn systemd_directory_ships_the_hub_tunnel_and_tunnel_template_units() {
    let expected: Vec<String> = UNITS.iter().map(|(file, _, _)| file.to_string()).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(files_ending("systemd", ".service"), expected_sorted);
    for name in ["tunnelize.sysusers", "tunnelize.tmpfiles"] {
        assert!(
            project().join("systemd").join(name).is_file(),
            "systemd/{name} is missing"
        );
    }
}

#[test]
fn each_unit_runs_usr_bin_tunnelize_with_its_subcommand_and_config_file() {
    for (file, subcommand, config) in UNITS {
        let unit = Unit::load(file);
        let starts = unit.all("Service", "ExecStart");
        assert_eq!(starts.len(), 1, "{file}: exactly one ExecStart=");
        let words: Vec<&str> = starts[0].split_whitespace().collect();
        assert_eq!(
            words,
            ["/usr/bin/tunnelize", subcommand, "-c", config],
            "{file}: ExecStart="
        );
        let reload: Vec<&str> = unit
            .expect("Service", "ExecReload")
            .split_whitespace()
            .collect();
        assert_eq!(
            reload,
            [
                "/usr/bin/tunnelize",
                "reload",
                "-c",
                config,
                "--pid",
                "$MAINPID"
            ],
            "{file}: `systemctl reload` waits for the daemon's answer and fails when it refuses"
        );
        assert_eq!(unit.expect("Service", "Restart"), "on-failure", "{file}");
        assert_eq!(unit.expect("Service", "RestartSec"), "2s", "{file}");
        assert!(
            unit.words("Unit", "After")
                .contains(&"network-online.target")
                && unit
                    .words("Unit", "Wants")
                    .contains(&"network-online.target"),
            "{file}: starts once the network is online"
        );
        assert_eq!(
            unit.words("Install", "WantedBy"),
            ["multi-user.target"],
            "{file}: `systemctl enable` starts it at boot"
        );
        assert!(unit.get("Unit", "Description").is_some(), "{file}");
        assert!(unit.get("Unit", "Documentation").is_some(), "{file}");
    }
}

#[test]
fn every_config_path_a_unit_passes_with_dash_c_is_under_etc_tunnelize() {
    for unit in units() {
        let mut seen = 0;
        for entry in unit.entries.iter().filter(|e| e.key.starts_with("Exec")) {
            let words: Vec<&str> = entry.value.split_whitespace().collect();
            for (i, word) in words.iter().enumerate() {
                let path = match *word {
                    "-c" | "--config" => words.get(i + 1).copied(),
                    _ => word.strip_prefix("--config="),
                };
                if let Some(path) = path {
                    seen += 1;
                    assert!(
                        path.starts_with("/etc/tunnelize/") && path.ends_with(".toml"),
                        "{}: {}= reads {path}, outside /etc/tunnelize/",
                        unit.name,
                        entry.key
                    );
                }
            }
        }
        assert!(seen > 0, "{}: names no config file with -c", unit.name);
        assert_eq!(
            unit.get("Service", "ConfigurationDirectory"),
            Some("tunnelize"),
            "{}: /etc/tunnelize is its configuration directory",
            unit.name
        );
    }
}

#[test]
fn units_wait_for_ready_and_ask_for_a_watchdog_the_daemons_feed() {
    for unit in units() {
        assert_eq!(unit.get("Service", "Type"), Some("notify"), "{}", unit.name);
        assert_eq!(
            unit.get("Service", "NotifyAccess"),
            Some("main"),
            "{}",
            unit.name
        );
        assert!(
            unit.get("Service", "WatchdogSec").is_some(),
            "{}",
            unit.name
        );
    }
}

#[test]
fn tunnel_units_do_not_restart_after_the_hub_refuses_the_key() {
    // The status that `tunnelize tunnel` exits with when the hub refuses its key.
    assert_eq!(tunnelize::exit::AUTH_FAILED, 4);
    for unit in units() {
        let prevented = unit.words("Service", "RestartPreventExitStatus");
        if unit.is_tunnel() {
            assert!(
                prevented.contains(&tunnelize::exit::AUTH_FAILED.to_string().as_str()),
                "{}: a refused key must not be retried forever",
                unit.name
            );
        } else {
            assert!(
                !prevented.contains(&"4"),
                "{}: the hub has no exit status 4",
                unit.name
            );
        }
    }
}

#[test]
fn no_unit_restarts_after_a_configuration_error() {
    // The status that the daemons exit with when their configuration is at fault.
    assert_eq!(tunnelize::exit::CONFIG, 78);
    for unit in units() {
        let prevented = unit.words("Service", "RestartPreventExitStatus");
        assert!(
            prevented.contains(&"78"),
            "{}: a configuration error must end in `failed`, not restart forever",
            unit.name
        );
        assert_eq!(
            unit.words("Service", "Restart"),
            ["on-failure"],
            "{}: a crash still restarts",
            unit.name
        );
    }
}

#[test]
fn units_run_as_the_tunnelize_user_with_the_system_hardened() {
    let required = [
        ("User", "tunnelize"),
        ("Group", "tunnelize"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("DevicePolicy", "closed"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallErrorNumber", "EPERM"),
        ("KeyringMode", "private"),
        ("RemoveIPC", "yes"),
        ("UMask", "0027"),
        ("LimitNOFILE", "20000"),
    ];
    for unit in units() {
        for (key, value) in required {
            assert_eq!(
                unit.get("Service", key),
                Some(value),
                "{}: {key}=",
                unit.name
            );
        }
        let families: BTreeSet<&str> = unit
            .words("Service", "RestrictAddressFamilies")
            .into_iter()
            .collect();
        assert_eq!(
            families,
            BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
            "{}: RestrictAddressFamilies=",
            unit.name
        );
        let filters = unit.all("Service", "SystemCallFilter");
        assert_eq!(
            filters.first(),
            Some(&"@system-service"),
            "{}: the system call filter starts from an allow list",
            unit.name
        );
        let denied: BTreeSet<&str> = filters
            .iter()
            .filter_map(|f| f.strip_prefix('~'))
            .flat_map(str::split_whitespace)
            .collect();
        for group in ["@privileged", "@resources"] {
            assert!(
                denied.contains(group),
                "{}: SystemCallFilter= must deny {group}",
                unit.name
            );
        }
    }
}

#[test]
fn only_the_hub_may_bind_privileged_ports_and_tunnels_hold_no_capability() {
    for unit in units() {
        let bounding = unit.words("Service", "CapabilityBoundingSet");
        let ambient = unit.words("Service", "AmbientCapabilities");
        if unit.is_tunnel() {
            assert!(
                unit.get("Service", "CapabilityBoundingSet").is_some() && bounding.is_empty(),
                "{}: CapabilityBoundingSet= must be set and empty",
                unit.name
            );
            assert!(ambient.is_empty(), "{}: no ambient capabilities", unit.name);
        } else {
            assert_eq!(bounding, ["CAP_NET_BIND_SERVICE"], "{}", unit.name);
            assert_eq!(ambient, ["CAP_NET_BIND_SERVICE"], "{}", unit.name);
        }
        // Not for the hub: a capability held in a private user namespace cannot bind the
        // host's ports. Not for the tunnels: only the unit's own group is mapped there, and
        // the daemons give their sockets to group tunnelize-admin.
        assert_ne!(
            unit.get("Service", "PrivateUsers"),
            Some("yes"),
            "{}",
            unit.name
        );
    }
}

#[test]
fn units_sharing_run_tunnelize_keep_it_when_one_of_them_stops() {
    for unit in units() {
        assert_eq!(
            unit.get("Service", "RuntimeDirectory"),
            Some("tunnelize"),
            "{}",
            unit.name
        );
        // It holds only the admin sockets (0660, group tunnelize-admin), which that group's
        // members must reach.
        assert_eq!(
            unit.get("Service", "RuntimeDirectoryMode"),
            Some("0755"),
            "{}",
            unit.name
        );
        assert_eq!(
            unit.words("Service", "SupplementaryGroups"),
            ["tunnelize-admin"],
            "{}: may give its socket to the operators' group",
            unit.name
        );
        assert_eq!(
            unit.get("Service", "RuntimeDirectoryPreserve"),
            Some("yes"),
            "{}: stopping it must not delete the other daemons' sockets",
            unit.name
        );
    }
}

#[test]
fn hub_default_admin_socket_is_inside_the_runtime_directory_its_unit_creates() {
    let (text, origin) = common::example_hub_toml_with_a_key();
    let hub =
        HubConfig::parse(&text, &origin).unwrap_or_else(|e| panic!("etc/tunnelize/hub.toml: {e}"));
    let socket = hub
        .admin
        .socket
        .expect("the example hub serves its admin socket");
    assert_eq!(socket, Path::new("/run/tunnelize/hub.sock"));
    let unit = Unit::load("tunnelize-hub.service");
    let runtime = Path::new("/run").join(unit.expect("Service", "RuntimeDirectory"));
    assert_eq!(socket.parent(), Some(runtime.as_path()));

    // The generated certificate goes to state_dir, which the unit must make writable.
    let state = Path::new("/var/lib").join(unit.expect("Service", "StateDirectory"));
    assert_eq!(hub.state_dir, state);
}

#[test]
fn tunnel_default_status_socket_is_inside_the_runtime_directory_its_units_create() {
    let (text, origin) = crate::common::example_tunnel_toml_with_a_key();
    let tunnel = TunnelConfig::parse(&text, &origin)
        .unwrap_or_else(|e| panic!("etc/tunnelize/tunnel.toml: {e}"));
    let socket = tunnel
        .admin
        .socket
        .expect("the example tunnel serves its socket");
    for unit in units().into_iter().filter(Unit::is_tunnel) {
        let runtime = Path::new("/run").join(unit.expect("Service", "RuntimeDirectory"));
        assert_eq!(socket.parent(), Some(runtime.as_path()), "{}", unit.name);
    }
}

// ---------------------------------------------------------------------------------------------
// sysusers.d and tmpfiles.d

/// The lines of a sysusers.d/tmpfiles.d file, split into fields (double quotes group words).
fn config_lines(relative: &str) -> Vec<Vec<String>> {
    read(relative)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut quoted = false;
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    c if c.is_whitespace() && !quoted => {
                        if !field.is_empty() {
                            fields.push(std::mem::take(&mut field));
                        }
                    }
                    c => field.push(c),
                }
            }
            assert!(!quoted, "{relative}: unclosed quote in {line}");
            if !field.is_empty() {
                fields.push(field);
            }
            fields
        })
        .collect()
}

#[test]
fn sysusers_declares_the_tunnelize_system_user_and_group_the_units_run_as() {
    let lines = config_lines("systemd/tunnelize.sysusers");
    let user = lines
        .iter()
        .find(|f| {
            f.first().map(String::as_str) == Some("u")
                && f.get(1).map(String::as_str) == Some("tunnelize")
        })
        .expect("systemd/tunnelize.sysusers has a `u tunnelize` line");
    // u NAME ID GECOS HOME [SHELL]: a dynamic system id ("-", or "-:GROUP"), home in the state dir.
    let id = user.get(2).expect("an ID field");
    assert!(
        id == "-" || id == "-:tunnelize",
        "the user gets a dynamic system id in group tunnelize, not {id}"
    );
    assert_eq!(user.get(4).map(String::as_str), Some("/var/lib/tunnelize"));
    // The group is declared by a `g` line, or implied by a `u` line with no explicit group.
    let group = lines.iter().any(|f| {
        f.first().map(String::as_str) == Some("g")
            && f.get(1).map(String::as_str) == Some("tunnelize")
    });
    assert!(group || id == "-", "group tunnelize is declared");
    assert!(
        lines.iter().any(|f| {
            f.first().map(String::as_str) == Some("g")
                && f.get(1).map(String::as_str) == Some("tunnelize-admin")
        }),
        "group tunnelize-admin (the operators', for the admin sockets) is declared"
    );
    for unit in units() {
        assert_eq!(
            unit.get("Service", "User"),
            Some("tunnelize"),
            "{}",
            unit.name
        );
        assert_eq!(
            unit.get("Service", "Group"),
            Some("tunnelize"),
            "{}",
            unit.name
        );
    }
}

#[test]
fn tmpfiles_creates_the_runtime_and_state_directories_for_group_tunnelize() {
    let lines = config_lines("systemd/tunnelize.tmpfiles");
    let hub = Unit::load("tunnelize-hub.service");
    let runtime = format!("/run/{}", hub.expect("Service", "RuntimeDirectory"));
    let state = format!("/var/lib/{}", hub.expect("Service", "StateDirectory"));
    for (path, mode) in [(runtime.as_str(), "0755"), (state.as_str(), "0750")] {
        let line = lines
            .iter()
            .find(|f| f.get(1).map(String::as_str) == Some(path))
            .unwrap_or_else(|| panic!("systemd/tunnelize.tmpfiles does not create {path}"));
        assert_eq!(
            line[..line.len().min(5)],
            ["d", path, mode, "tunnelize", "tunnelize"],
            "{path}: a directory, {mode}, owned by tunnelize:tunnelize"
        );
    }
    assert_eq!(hub.get("Service", "StateDirectoryMode"), Some("0750"));
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze (ignored unless asked for: `cargo test -- --ignored`, as CI does)

/// The `systemd-analyze` program; panics if it is not installed, so an ignored test that is
/// asked for never passes without having analyzed anything.
fn systemd_analyze() -> PathBuf {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "this test needs systemd-analyze (Debian package systemd)"
    );
    PathBuf::from("systemd-analyze")
}

/// Copies of the units in a temporary directory, running the binary this test was built with
/// (`verify` refuses an ExecStart= whose program does not exist).
fn units_with_built_binary() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (file, _, _) in UNITS {
        let text = read(&format!("systemd/{file}"))
            .replace("/usr/bin/tunnelize", env!("CARGO_BIN_EXE_tunnelize"));
        fs::write(dir.path().join(file), text).expect("write unit copy");
    }
    dir
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd)"]
fn units_pass_systemd_analyze_verify_without_a_warning() {
    let analyze = systemd_analyze();
    let dir = units_with_built_binary();
    for (file, _, _) in UNITS {
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(dir.path().join(file))
            .output()
            .expect("run systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("tunnelize-"))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify {file}:\n{stderr}"
        );
    }
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd)"]
fn units_rate_2_0_or_lower_in_systemd_analyze_security() {
    let analyze = systemd_analyze();
    let dir = units_with_built_binary();
    for (file, _, _) in UNITS {
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
            .arg(dir.path().join(file))
            .output()
            .expect("run systemd-analyze security");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let level: f64 = stdout
            .lines()
            .find_map(|line| line.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("{file}: no exposure level in\n{stdout}"));
        assert!(
            out.status.success() && level <= 2.0,
            "{file}: exposure {level} is above 2.0\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// launchd

fn plist(role: &str) -> (String, Dictionary) {
    let file = format!("com.tunnelize.{role}.plist");
    let path = project().join("launchd").join(&file);
    let value = Value::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: not a property list: {e}", path.display()));
    let dict = value
        .into_dictionary()
        .unwrap_or_else(|| panic!("{file}: the top level is not a dictionary"));
    (file, dict)
}

fn string<'a>(file: &str, dict: &'a Dictionary, key: &str) -> &'a str {
    dict.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("{file}: no string {key}"))
}

#[test]
fn launchd_plists_are_labelled_after_their_file_and_keep_the_daemon_alive() {
    let expected: Vec<String> = PLISTS
        .iter()
        .map(|role| format!("com.tunnelize.{role}.plist"))
        .collect();
    assert_eq!(files_ending("launchd", ".plist"), expected);
    for role in PLISTS {
        let (file, dict) = plist(role);
        let stem = file.strip_suffix(".plist").expect("a .plist file");
        assert_eq!(string(&file, &dict, "Label"), stem, "{file}: Label");
        assert_eq!(
            dict.get("RunAtLoad").and_then(Value::as_boolean),
            Some(true),
            "{file}: starts when loaded"
        );
        let keep_alive = dict
            .get("KeepAlive")
            .unwrap_or_else(|| panic!("{file}: no KeepAlive"));
        // Restarted when it fails, not after a clean stop.
        let successful_exit = keep_alive
            .as_dictionary()
            .and_then(|k| k.get("SuccessfulExit"))
            .and_then(Value::as_boolean);
        assert_eq!(
            successful_exit,
            Some(false),
            "{file}: KeepAlive = {{ SuccessfulExit = false }}"
        );
        assert_eq!(
            dict.get("ThrottleInterval")
                .and_then(Value::as_signed_integer),
            Some(5),
            "{file}: ThrottleInterval"
        );
    }
}

#[test]
fn launchd_plists_run_their_subcommand_and_log_under_usr_local_var_log_tunnelize() {
    for role in PLISTS {
        let (file, dict) = plist(role);
        let args: Vec<&str> = dict
            .get("ProgramArguments")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{file}: no ProgramArguments array"))
            .iter()
            .map(|v| {
                v.as_string()
                    .unwrap_or_else(|| panic!("{file}: non-string argument"))
            })
            .collect();
        assert!(
            args.first()
                .is_some_and(|program| program.ends_with("/tunnelize")),
            "{file}: runs tunnelize, not {args:?}"
        );
        assert_eq!(
            args[1..],
            [
                role,
                "-c",
                format!("/usr/local/etc/tunnelize/{role}.toml").as_str()
            ],
            "{file}: ProgramArguments"
        );
        let out = string(&file, &dict, "StandardOutPath");
        let err = string(&file, &dict, "StandardErrorPath");
        for path in [out, err] {
            assert!(
                path.starts_with("/usr/local/var/log/tunnelize/") && path.ends_with(".log"),
                "{file}: log file {path} is outside /usr/local/var/log/tunnelize/"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packages (packaging/build.sh builds them from Cargo.toml's metadata)

/// The (source, destination) pairs of the deb and rpm assets in Cargo.toml.
fn package_assets() -> Vec<(String, String, String)> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let metadata = &manifest["package"]["metadata"];
    let mut assets = Vec::new();
    for entry in metadata["deb"]["assets"].as_array().expect("deb assets") {
        let fields = entry
            .as_array()
            .expect("a deb asset is [source, dest, mode]");
        let field = |i: usize| fields[i].as_str().unwrap().to_owned();
        assets.push(("deb".to_owned(), field(0), field(1)));
    }
    // The .rpm's spec installs from the tree (`%{tz_root}/…`) and from the build
    // (`%{tz_bin}/…`, release binaries when build.sh makes a release package).
    for word in read("packaging/rpm/tunnelize.spec").split_whitespace() {
        let word = word.trim_end_matches(')');
        let source = match (
            word.strip_prefix("%{tz_root}/"),
            word.strip_prefix("%{tz_bin}/"),
        ) {
            (Some(file), _) => file.to_owned(),
            (None, Some(binary)) => format!("target/release/{binary}"),
            (None, None) => continue,
        };
        assets.push(("rpm".to_owned(), source, String::new()));
    }
    assets
}

#[test]
fn both_packages_ship_every_unit_and_example_config_from_files_in_the_repository() {
    let assets = package_assets();
    for (kind, source, _) in &assets {
        // Binaries and generated pages come from the build; everything else is in the tree.
        if source.starts_with("target/") {
            continue;
        }
        assert!(
            project().join(source).is_file(),
            "{kind} asset {source} does not exist"
        );
    }
    for kind in ["deb", "rpm"] {
        let sources: Vec<&str> = assets
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, s, _)| s.as_str())
            .collect();
        for unit in files_ending("systemd", ".service") {
            assert!(
                sources.contains(&format!("systemd/{unit}").as_str()),
                "the {kind} misses systemd/{unit}"
            );
        }
        for needed in [
            "target/release/tunnelize",
            "target/release/tunnelizectl",
            "etc/tunnelize/hub.toml",
            "etc/tunnelize/tunnel.toml",
            "systemd/tunnelize.sysusers",
            "systemd/tunnelize.tmpfiles",
        ] {
            assert!(sources.contains(&needed), "the {kind} misses {needed}");
        }
    }
}

#[test]
fn the_rpm_keeps_edited_configs_and_the_deb_treats_etc_as_conffiles() {
    let spec = read("packaging/rpm/tunnelize.spec");
    let files = spec
        .split_once("\n%files\n")
        .expect("the spec has a %files section")
        .1;
    let configs: Vec<&str> = files
        .lines()
        .filter(|line| line.contains(" /etc/tunnelize/"))
        .collect();
    assert_eq!(configs.len(), 2, "{configs:?}");
    for line in configs {
        assert!(line.starts_with("%config(noreplace) "), "{line}");
    }
    // cargo-deb marks every file installed under /etc as a conffile.
    let deb_etc = package_assets()
        .into_iter()
        .filter(|(k, _, d)| k == "deb" && d.starts_with("etc/"))
        .count();
    assert_eq!(deb_etc, 2);
}
