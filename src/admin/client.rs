//! The admin API client that `tunnelizectl` uses: one HTTP/1.1 request per call, over a
//! daemon's Unix socket or over TLS to the hub's admin listener with a bearer monitoring key.
//!
//! This module owns reaching a daemon and turning each way a request can fail into an
//! [`AdminError`] that says what failed and what to do. It must not format anything for
//! people beyond those errors (that is `tunnelizectl`'s job), and it never prints the key.
//! Every call is bounded by the client's timeout, connecting and reading included.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::admin::model::Message;
use crate::config::HubTrust;
use crate::secret::Secret;
use crate::tls::{self, TlsError};

/// The hub daemon's admin socket when none is configured.
pub const HUB_SOCKET: &str = "/run/tunnelize/hub.sock";
/// The tunnel daemon's admin socket when none is configured.
pub const TUNNEL_SOCKET: &str = "/run/tunnelize/tunnel.sock";
/// How long a call may take, connecting included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body accepted (the metrics text of a busy hub fits many times over).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why an admin call failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The daemon could not be reached: no socket, nothing listening, refused TLS, or no
    /// answer within the timeout.
    #[error("cannot reach {daemon}: {detail}; {hint}")]
    Unreachable {
        /// The daemon as addressed (`the daemon socket PATH`, `the hub at https://...`).
        daemon: String,
        /// What went wrong.
        detail: String,
        /// What to do about it.
        hint: String,
    },
    /// The daemon refused the caller: 401 or 403, or no permission on its socket.
    #[error("{daemon} refused access ({reason}); {hint}")]
    Unauthorized {
        /// The daemon as addressed.
        daemon: String,
        /// The status and the daemon's explanation, or the socket's refusal.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// The daemon has no such thing (404).
    #[error("{message} (404 from {daemon} for {path})")]
    NotFound {
        /// The daemon as addressed.
        daemon: String,
        /// The request path.
        path: String,
        /// The daemon's explanation.
        message: String,
    },
    /// Any other unsuccessful HTTP status.
    #[error("{daemon} answered {status} to {method} {path}: {message}")]
    Status {
        /// The daemon as addressed.
        daemon: String,
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// The status.
        status: u16,
        /// The daemon's explanation.
        message: String,
    },
    /// The answer could not be used (broken connection, oversized or malformed body).
    #[error("bad answer from {daemon} to {method} {path}: {problem}")]
    BadResponse {
        /// The daemon as addressed.
        daemon: String,
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The `--hub` address is not `https://HOST[:PORT]`.
    #[error(
        "{address:?} is not a hub admin address: {problem}; write it like https://hub.example.com:9443"
    )]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The monitoring key cannot be sent in an HTTP header.
    #[error(
        "the monitoring key contains characters that cannot be sent in an HTTP header; \
         check --key or TUNNELIZE_MONITOR_KEY"
    )]
    BadKey,
    /// No way to verify the hub was given and the system has no usable root certificates.
    #[error(
        "no usable system root certificates to verify the hub ({0}); pass --ca FILE or \
         --fingerprint SHA256"
    )]
    NoTrust(String),
    /// The TLS settings could not be used (unreadable CA file, ...).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where a daemon's admin API is.
enum Target {
    /// A Unix socket.
    Socket(PathBuf),
    /// The hub's TLS admin listener.
    Hub(HubTarget),
}

struct HubTarget {
    /// The address as given, for messages and the `Host` header.
    address: String,
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    /// `Bearer <key>`, marked sensitive; `None` when no key was given.
    authorization: Option<HeaderValue>,
}

/// A client for one daemon's admin API.
pub struct AdminClient {
    target: Target,
    timeout: Duration,
}

impl AdminClient {
    /// A client for the daemon listening on the Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        AdminClient {
            target: Target::Socket(path.into()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client for the hub's TLS admin listener at `address` (`https://HOST[:PORT]`, port 443
    /// when absent), verified by `trust` and authenticated by `key` when given.
    pub fn hub(address: &str, trust: &HubTrust, key: Option<Secret>) -> Result<Self, AdminError> {
        let (host, port) = parse_hub_address(address)?;
        let server_name = tls::server_name(&host)?;
        let config = tls::client_config(trust).map_err(|e| match e {
            TlsError::NoSystemRoots(why) => AdminError::NoTrust(why),
            other => AdminError::Tls(other),
        })?;
        let connector = TlsConnector::from(config);
        let authorization = match key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| AdminError::BadKey)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(AdminClient {
            target: Target::Hub(HubTarget {
                address: address.to_owned(),
                authority,
                host,
                port,
                server_name,
                connector,
                authorization,
            }),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the bound on each call, connecting included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The daemon as addressed, for messages: `the daemon socket PATH` or `the hub at URL`.
    pub fn daemon(&self) -> String {
        match &self.target {
            Target::Socket(path) => format!("the daemon socket {}", path.display()),
            Target::Hub(hub) => format!("the hub at {}", hub.address),
        }
    }

    /// `GET path`, decoded from JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call_json(Method::GET, path).await
    }

    /// `GET path` as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, AdminError> {
        let body = self.call(Method::GET, path).await?;
        String::from_utf8(body.to_vec()).map_err(|_| self.bad(Method::GET, path, "not UTF-8"))
    }

    /// `DELETE path`, its answer decoded from JSON.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call_json(Method::DELETE, path).await
    }

    /// `POST path` with an empty body, its answer decoded from JSON.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call_json(Method::POST, path).await
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, AdminError> {
        let body = self.call(method.clone(), path).await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.bad(method, path, &format!("not the expected JSON ({e})")))
    }

    /// One request, bounded by the timeout; the body of a 2xx answer.
    async fn call(&self, method: Method, path: &str) -> Result<Bytes, AdminError> {
        let exchange = async {
            let request = self.request(method.clone(), path)?;
            match &self.target {
                Target::Socket(socket) => {
                    let stream = UnixStream::connect(socket)
                        .await
                        .map_err(|e| socket_unreachable(socket, &e))?;
                    self.exchange(stream, request).await
                }
                Target::Hub(hub) => {
                    let stream = hub.connect().await?;
                    self.exchange(stream, request).await
                }
            }
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AdminError::Unreachable {
                daemon: self.daemon(),
                detail: format!("no answer within {}", seconds(self.timeout)),
                hint: "check that the daemon is running and not stuck, or raise --timeout".into(),
            })??;
        self.check_status(method, path, status, body)
    }

    fn request(&self, method: Method, path: &str) -> Result<Request<Empty<Bytes>>, AdminError> {
        let uri: Uri = path
            .parse()
            .map_err(|e| self.bad(method.clone(), path, &format!("invalid path ({e})")))?;
        let mut request = Request::builder().method(method.clone()).uri(uri);
        match &self.target {
            Target::Socket(_) => request = request.header(HOST, "localhost"),
            Target::Hub(hub) => {
                request = request.header(HOST, hub.authority.as_str());
                if let Some(value) = &hub.authorization {
                    request = request.header(AUTHORIZATION, value.clone());
                }
            }
        }
        request
            .body(Empty::new())
            .map_err(|e| self.bad(method, path, &format!("cannot build the request ({e})")))
    }

    /// Sends `request` over `stream` and reads the whole answer.
    async fn exchange<S>(
        &self,
        stream: S,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, Bytes), AdminError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let broken = |e: &dyn std::fmt::Display| {
            self.bad(
                method.clone(),
                &path,
                &format!("the connection broke before a complete answer ({e})"),
            )
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| broken(&e))?;
        // Drives the connection while the answer is read; stopped once it has been.
        let driver = tokio::spawn(connection);
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| broken(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        self.bad(
                            method.clone(),
                            &path,
                            &format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                        )
                    } else {
                        broken(&e)
                    }
                })?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }

    fn check_status(
        &self,
        method: Method,
        path: &str,
        status: StatusCode,
        body: Bytes,
    ) -> Result<Bytes, AdminError> {
        if status.is_success() {
            return Ok(body);
        }
        let message = message_of(status, &body);
        let daemon = self.daemon();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdminError::Unauthorized {
                daemon,
                reason: format!("{}: {message}", status.as_u16()),
                hint: self.auth_hint(),
            },
            StatusCode::NOT_FOUND => AdminError::NotFound {
                daemon,
                path: path.to_owned(),
                message,
            },
            _ => AdminError::Status {
                daemon,
                method,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
            },
        })
    }

    fn auth_hint(&self) -> String {
        match &self.target {
            Target::Socket(socket) => format!(
                "run as root or as a member of the group that owns {}",
                socket.display()
            ),
            Target::Hub(HubTarget {
                authorization: None,
                ..
            }) => "no monitoring key was given; pass the hub's monitoring key with --key or \
                 TUNNELIZE_MONITOR_KEY"
                .into(),
            Target::Hub(_) => "check that --key or TUNNELIZE_MONITOR_KEY holds the hub's \
                               monitoring key ([admin] key in hub.toml)"
                .into(),
        }
    }

    fn bad(&self, method: Method, path: &str, problem: &str) -> AdminError {
        AdminError::BadResponse {
            daemon: self.daemon(),
            method,
            path: path.to_owned(),
            problem: problem.to_owned(),
        }
    }
}

impl HubTarget {
    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, AdminError> {
        let unreachable = |detail: String, hint: &str| AdminError::Unreachable {
            daemon: format!("the hub at {}", self.address),
            detail,
            hint: hint.to_owned(),
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                let hint = match e.kind() {
                    io::ErrorKind::ConnectionRefused => {
                        "check the address and that the hub's [admin] `listen` is set"
                    }
                    _ => "check the address and the network path to the hub",
                };
                unreachable(e.to_string(), hint)
            })?;
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                let (detail, rejected) = tls::describe_handshake_error(&e);
                let hint = if rejected {
                    "pass --ca with the CA file that signed the hub's certificate, or \
                     --fingerprint with the SHA-256 of that certificate"
                } else {
                    "check that the address is the hub's TLS admin listener"
                };
                unreachable(format!("TLS handshake failed: {detail}"), hint)
            })
    }
}

/// Parses `https://HOST[:PORT]` (nothing after the authority but an optional `/`).
fn parse_hub_address(address: &str) -> Result<(String, u16), AdminError> {
    let bad = |problem: &str| AdminError::BadAddress {
        address: address.to_owned(),
        problem: problem.to_owned(),
    };
    let uri: Uri = address.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(_) => return Err(bad("the admin API is only served over https")),
        None => return Err(bad("it has no https:// in front")),
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("it must not have a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "it must not carry user information; pass the key with --key",
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    Ok((host.to_owned(), authority.port_u16().unwrap_or(443)))
}

/// Percent-encodes `text` for use as one path segment (a service name, a tunnel or client id),
/// so that no argument can reach another endpoint (`.` too, so `..` stays a name).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn socket_unreachable(socket: &Path, e: &io::Error) -> AdminError {
    let daemon = format!("the daemon socket {}", socket.display());
    if e.kind() == io::ErrorKind::PermissionDenied {
        return AdminError::Unauthorized {
            daemon,
            reason: "permission denied".into(),
            hint: "run as root or as a member of the socket's group (`tunnelize-admin` as the packages set it up: `usermod -aG tunnelize-admin USER`)"
                .into(),
        };
    }
    let (detail, hint) = match e.kind() {
        io::ErrorKind::NotFound => (
            "no such socket".to_owned(),
            "is the daemon running? Start it, or pass --socket with the path in its [admin] \
             `socket` setting",
        ),
        io::ErrorKind::ConnectionRefused => (
            "nothing is listening on it".to_owned(),
            "the daemon that made it has stopped; start it again",
        ),
        _ => (e.to_string(), "check --socket"),
    };
    AdminError::Unreachable {
        daemon,
        detail,
        hint: hint.to_owned(),
    }
}

/// The daemon's explanation of an unsuccessful status: its [`Message`], else its short text,
/// else the status's reason phrase.
fn message_of(status: StatusCode, body: &[u8]) -> String {
    if let Ok(Message { message }) = serde_json::from_slice::<Message>(body) {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 200 || text.contains('\n') {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    } else {
        text.to_owned()
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses_are_https_with_an_optional_port() {
        assert_eq!(
            parse_hub_address("https://hub.example.com:9443").ok(),
            Some(("hub.example.com".into(), 9443))
        );
        assert_eq!(
            parse_hub_address("https://hub.example.com/").ok(),
            Some(("hub.example.com".into(), 443))
        );
        assert_eq!(
            parse_hub_address("https://[::1]:9443").ok(),
            Some(("::1".into(), 9443))
        );
        for bad in [
            "http://hub:9443",
            "hub:9443",
            "https://hub:9443/v1",
            "https://user:pw@hub:9443",
            "",
        ] {
            assert!(parse_hub_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_segments_cannot_escape_their_segment() {
        assert_eq!(path_segment("web_1-a~"), "web_1-a~");
        assert_eq!(path_segment("../x?y#z"), "%2E%2E%2Fx%3Fy%23z");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn error_messages_prefer_the_daemons_message() {
        let body = serde_json::to_vec(&Message {
            message: "no service named `x`".into(),
        })
        .unwrap();
        assert_eq!(
            message_of(StatusCode::NOT_FOUND, &body),
            "no service named `x`"
        );
        assert_eq!(message_of(StatusCode::NOT_FOUND, b" gone \n"), "gone");
        assert_eq!(message_of(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sock");
        let err = AdminClient::unix(&path)
            .get::<Message>("/v1/system")
            .await
            .unwrap_err();
        assert!(matches!(err, AdminError::Unreachable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("no such socket"), "{text}");
    }

    #[test]
    fn a_key_that_cannot_go_in_a_header_is_refused_without_showing_it() {
        let err = AdminClient::hub(
            "https://localhost:9443",
            &HubTrust::Fingerprint([0; 32]),
            Some(Secret::new("secret-part\nsecond-line")),
        )
        .err()
        .expect("refused");
        assert!(matches!(err, AdminError::BadKey), "{err}");
        assert!(!err.to_string().contains("secret-part"), "{err}");
    }
}
