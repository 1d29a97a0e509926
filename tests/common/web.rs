//! A small HTTP application to stand behind tunnels in tests: it reports what it received,
//! and has paths that stream, stay silent, count uploads (also answering before reading one),
//! and speak WebSocket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;

/// A running app.
#[derive(Clone)]
pub struct App {
    pub addr: SocketAddr,
    /// `METHOD path` of every request that reached it, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Lets `/sse` send its second event.
    pub release: Arc<Notify>,
    /// Body bytes each `/upload` or `/answer-first` request delivered before it ended or
    /// failed, in order of completion.
    pub uploads: Arc<Mutex<Vec<u64>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl App {
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn uploads(&self) -> Vec<u64> {
        self.uploads.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads `body` to its end or first error; returns the data bytes seen and whether it ended
/// cleanly.
async fn count_body(mut body: Incoming) -> (u64, bool) {
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return (total, false),
        }
    }
    (total, true)
}

pub async fn start_app(tag: &'static str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        release: Arc::new(Notify::new()),
        uploads: Arc::default(),
        connections: Arc::default(),
    };
    let state = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(tag, state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    app
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn respond(
    tag: &'static str,
    state: App,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state
        .seen
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri().path()));
    match req.uri().path() {
        "/silent" => std::future::pending().await,
        "/upload" => {
            let (total, clean) = count_body(req.into_body()).await;
            state.uploads.lock().unwrap().push(total);
            if !clean {
                return Ok(text(StatusCode::BAD_REQUEST, "body failed"));
            }
            Ok(text(StatusCode::OK, total.to_string()))
        }
        "/answer-first" => {
            // The response head goes out at once; the body (the count) once the upload ended.
            let uploads = state.uploads.clone();
            let body = req.into_body();
            let counted = futures_util::stream::once(async move {
                let (total, clean) = count_body(body).await;
                uploads.lock().unwrap().push(total);
                let verdict = if clean { "" } else { " (failed)" };
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{total}{verdict}"))))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(counted))))
        }
        "/sse" => {
            let release = state.release.clone();
            let events = futures_util::stream::unfold(0u8, move |step| {
                let release = release.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: one\n\n"))),
                            1,
                        )),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
            Ok(r)
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(text(StatusCode::BAD_REQUEST, "not a websocket request"));
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_binary() || msg.is_text() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            let h = r.headers_mut();
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert(header::CONNECTION, "upgrade".parse().unwrap());
            h.insert(
                "sec-websocket-accept",
                derive_accept_key(key.as_bytes()).parse().unwrap(),
            );
            Ok(r)
        }
        _ => {
            let mut headers = serde_json::Map::new();
            for (name, value) in req.headers() {
                let entry = headers
                    .entry(name.as_str().to_owned())
                    .or_insert_with(|| serde_json::json!([]));
                if let Some(list) = entry.as_array_mut() {
                    list.push(serde_json::json!(value.to_str().unwrap_or("")));
                }
            }
            let method = req.method().to_string();
            let path = req.uri().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            let report = serde_json::json!({ "app": tag, "method": method, "path": path, "headers": headers, "body_len": body });
            Ok(text(StatusCode::OK, report.to_string()))
        }
    }
}
