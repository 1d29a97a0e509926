//! Basic-auth credentials never show: the built `tunnelize` binary runs a hub and a tunnel in
//! child processes at `RUST_LOG=trace`, a proxy guarded by basic auth is asked with the right
//! and a wrong password, and neither password (nor its `user:password` base64 form) appears in
//! either process's log or in anything their admin APIs answer. The target never gets the
//! credential either.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use common::web::start_app;
use common::*;
use parking_lot::Mutex;
use tokio::process::{Child, Command};

const USER: &str = "ann";
const PASSWORD: &str = "open-sesame-7731";
const WRONG: &str = "wrong-guess-4410";

/// A daemon child process whose stderr is collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (child, reader) = spawn_with_stderr(
            Command::new(env!("CARGO_BIN_EXE_tunnelize"))
                .args(args)
                .env("RUST_LOG", "trace")
                .env_remove("TUNNELIZE_KEY")
                .env_remove("JOURNAL_STREAM"),
            "tunnelize runs",
            move |line| {
                let mut log = sink.lock();
                log.push_str(&line);
                log.push('\n');
            },
        );
        Daemon { child, log, reader }
    }

    fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// Waits for a log line containing `marker`; returns that line.
    async fn line_with(&self, marker: &str) -> String {
        eventually(&format!("a log line with {marker:?}"), DEADLINE, || async {
            self.log()
                .lines()
                .find(|l| l.contains(marker))
                .map(str::to_owned)
        })
        .await
    }

    /// Stops the process and returns everything it logged.
    async fn stop(mut self) -> String {
        self.child.kill().await.unwrap();
        tokio::time::timeout(DEADLINE, self.reader)
            .await
            .expect("the log ends once the process is gone")
            .unwrap();
        self.log.lock().clone()
    }
}

/// The value of `key=` in a text log line.
fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

/// Runs curl; returns (status, everything it printed, headers included).
async fn curl(args: &[&str]) -> (u16, String) {
    let out = tokio::time::timeout(
        DEADLINE,
        Command::new("curl")
            .args(["-sS", "-i", "--max-time", "15", "-w", "\n%{http_code}"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("curl must be installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .rsplit('\n')
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    (code, text)
}

/// Everything the admin API on `socket` answers at `paths`.
async fn api_answers(socket: &Path, paths: &[&str]) -> String {
    let mut all = String::new();
    for path in paths {
        let url = format!("http://localhost{path}");
        let (status, text) = curl(&["--unix-socket", socket.to_str().unwrap(), &url]).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        all.push_str(&text);
    }
    all
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_or_api_of_either_daemon_shows_the_tunnel_key_or_a_basic_auth_credential() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app("private").await;
    let hub_file = dir.path().join("hub.toml");
    let hub_socket = dir.path().join("hub.sock");
    std::fs::write(
        &hub_file,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{state}\"\n\
             [admin]\nsocket = \"{socket}\"\n\
             [[keys]]\nname = \"test\"\nkey = \"{KEY}\"\n\
             [services.web]\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\ndomain = \"test.local\"\n",
            state = dir.path().join("state").display(),
            socket = hub_socket.display(),
        ),
    )
    .unwrap();
    let hub = Daemon::start(&["hub", "-c", hub_file.to_str().unwrap()]);
    let listening = hub.line_with("hub listening for tunnels").await;
    let (hub_addr, fingerprint) = (
        field(&listening, "listen"),
        field(&listening, "fingerprint"),
    );
    let web = field(&hub.line_with("serving http").await, "listen");

    let password_hash = tunnelize::hub::http::auth::hash_password(PASSWORD).unwrap();
    let tunnel_file = dir.path().join("tunnel.toml");
    let tunnel_socket = dir.path().join("tunnel.sock");
    std::fs::write(
        &tunnel_file,
        format!(
            "hub_address = \"{hub_addr}\"\nhub_server_name = \"localhost\"\n\
             hub_cert_sha256 = \"{fingerprint}\"\nkey = \"{KEY}\"\n\
             [admin]\nsocket = \"{socket}\"\n\
             [[proxies]]\nname = \"private\"\nservice = \"web\"\ntarget = \"{target}\"\n\
             hostname = \"private\"\n\
             [proxies.basic_auth]\nuser = \"{USER}\"\npassword_hash = '{password_hash}'\n",
            socket = tunnel_socket.display(),
            target = app.addr,
        ),
    )
    .unwrap();
    let tunnel = Daemon::start(&["tunnel", "-c", tunnel_file.to_str().unwrap()]);
    tunnel.line_with("proxy is live").await;

    let port = web.rsplit(':').next().unwrap().to_owned();
    let url = &format!("http://private.test.local:{port}/in");
    let resolve = format!("private.test.local:{port}:127.0.0.1");
    let right = format!("{USER}:{PASSWORD}");
    let wrong = format!("{USER}:{WRONG}");
    let (status, answer) = curl(&["--resolve", &resolve, "-u", &right, url]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("\"authorization\""),
        "the target never gets the credential: {answer}"
    );
    for credentials in [&wrong, &format!("bob:{PASSWORD}")] {
        let (status, answer) = curl(&["--resolve", &resolve, "-u", credentials, url]).await;
        assert_eq!(status, 401, "{answer}");
    }
    let (status, _) = curl(&["--resolve", &resolve, url]).await;
    assert_eq!(status, 401);
    assert_eq!(
        app.requests(),
        ["GET /in"],
        "only the right password got through"
    );

    let mut shown = api_answers(
        &hub_socket,
        &[
            "/v1/services",
            "/v1/services/web",
            "/v1/services/web/tunnels",
            "/v1/services/web/clients",
            "/v1/system",
            "/metrics",
        ],
    )
    .await;
    assert!(
        shown.contains("private.test.local"),
        "the API lists the proxy: {shown}"
    );
    shown.push_str(&api_answers(&tunnel_socket, &["/v1/status", "/v1/system", "/metrics"]).await);

    let tunnel_log = tunnel.stop().await;
    let hub_log = hub.stop().await;
    assert!(
        hub_log.contains("private.test.local") && tunnel_log.contains("proxy is live"),
        "the logs cover the requests:\n{hub_log}"
    );
    let secrets = [
        // The tunnel key, in both daemons' config files.
        KEY.to_owned(),
        PASSWORD.to_owned(),
        WRONG.to_owned(),
        basic(USER, PASSWORD),
        basic(USER, WRONG),
        basic("bob", PASSWORD),
    ];
    for (what, text) in [
        ("hub log", &hub_log),
        ("tunnel log", &tunnel_log),
        ("admin APIs", &shown),
    ] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} shows {secret:?}"
            );
        }
    }
}
