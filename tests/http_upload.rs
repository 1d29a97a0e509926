//! A 1 GiB upload streams through the `http` service without being buffered whole. In its own
//! test binary so no other test's memory use blurs the measurement.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::web::start_app;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const GIB: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_upload_streams_with_bounded_memory() {
    let web = http_with("web", "test.local", |http| {
        http.response_timeout = Duration::from_secs(300)
    });
    let hub = start_hub(vec![web]).await;
    let app = start_app("sink").await;
    let mut p = proxy("sink", "web", app.addr, None);
    p.hostname = Some("sink".into());
    let _t = start_tunnel(tunnel_config(&hub, vec![p])).await;

    let socket = TcpStream::connect(hub.services["web"]).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .unwrap();
    tokio::spawn(connection);
    let chunk = Bytes::from(payload(7, CHUNK));
    let chunks = (GIB / CHUNK as u64) as usize;
    let body = StreamBody::new(futures_util::stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
    ));
    let request = hyper::Request::post("/upload")
        .header("host", "sink.test.local")
        .header("content-length", GIB.to_string())
        .body(body)
        .unwrap();

    let (before, _) = memory();
    let response = tokio::time::timeout(Duration::from_secs(600), sender.send_request(request))
        .await
        .expect("upload timed out")
        .unwrap();
    assert_eq!(response.status(), 200);
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&counted),
        GIB.to_string(),
        "the target received every byte"
    );
    let (_, peak) = memory();
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 64 * 1024 * 1024,
        "peak memory grew by {} MiB while streaming 1 GiB (client, hub, tunnel and target share this process)",
        growth / (1024 * 1024)
    );
}
