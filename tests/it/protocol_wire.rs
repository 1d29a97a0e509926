//! The hub's side of the wire protocol, driven by hand-written peers: versions, link binding,
//! malformed and silent connections.

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnelize::channel::FramedStream;
use tunnelize::protocol::{
    Channel, Envelope, HubMessage, HubPreamble, PROTOCOL_VERSION, Preamble, RefusalCode,
    TunnelMessage,
};
use tunnelize::secret::Secret;
use uuid::Uuid;

async fn hello_and_answer(
    hub: &TestHub,
    preamble: Preamble,
    first: TunnelMessage,
) -> (HubPreamble, Option<Envelope<HubMessage>>) {
    let mut framed = FramedStream::new(tls_to(hub).await);
    framed
        .write_preamble_and(&preamble.encode(), &[&Envelope { id: 9, msg: first }])
        .await
        .unwrap();
    let answer = framed.read_hub_preamble(DEADLINE).await.unwrap();
    let reply = framed.read_message(DEADLINE, "answering").await.ok();
    (answer, reply)
}

#[tokio::test]
async fn a_hub_refuses_an_unknown_protocol_version_and_says_which_it_speaks() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let preamble = Preamble {
        version: PROTOCOL_VERSION + 1,
        channel: Channel::Control,
    };
    let (answer, reply) = hello_and_answer(&hub, preamble, TunnelMessage::Ping).await;
    assert_eq!(
        answer,
        HubPreamble {
            version: PROTOCOL_VERSION,
            accepted: false
        }
    );
    assert!(
        reply.is_none(),
        "nothing follows a refused version: {reply:?}"
    );
}

#[tokio::test]
async fn a_link_with_a_wrong_token_or_unknown_session_is_refused() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;
    // The live session's id with a wrong token, and a session that does not exist.
    for tunnel_id in [tunnel.tunnel_id, Uuid::nil()] {
        let hello = TunnelMessage::LinkHello {
            tunnel_id,
            token: Secret::random(32),
        };
        let (answer, reply) = hello_and_answer(&hub, Preamble::new(Channel::Link), hello).await;
        assert!(answer.accepted);
        match reply.map(|r| r.msg) {
            Some(HubMessage::Refused {
                code: RefusalCode::AuthFailed,
                ..
            }) => {}
            other => panic!("a link without its session's token must be refused, got {other:?}"),
        }
    }
    assert_eq!(
        round_trip(tunnel.addr(0), b"unaffected").await,
        b"unaffected"
    );
}

#[tokio::test]
async fn a_link_hello_on_the_control_channel_is_a_bad_request() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let hello = TunnelMessage::LinkHello {
        tunnel_id: Uuid::new_v4(),
        token: Secret::random(8),
    };
    let (_, reply) = hello_and_answer(&hub, Preamble::new(Channel::Control), hello).await;
    assert!(
        matches!(
            reply.map(|r| r.msg),
            Some(HubMessage::Refused {
                code: RefusalCode::BadRequest,
                ..
            })
        ),
        "control channels start with hello"
    );
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_connection_and_others_keep_working() {
    let hub = start_hub(vec![tcp_any("tcp")]).await;
    let echo = start_echo().await;
    let tunnel = start_tunnel(tunnel_config(&hub, vec![proxy("echo", "tcp", echo, None)])).await;

    // Not TLS at all.
    let mut raw = TcpStream::connect(hub.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a non-TLS peer must be dropped");

    // TLS, then bytes that are not a preamble.
    let mut tls = tls_to(&hub).await;
    tls.write_all(b"SSH-2.0-OpenSSH\r\n").await.unwrap();
    let closed = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a wrong magic must be dropped");

    // A good preamble, then a 4 GiB length prefix.
    let mut tls = tls_to(&hub).await;
    tls.write_all(&Preamble::new(Channel::Control).encode())
        .await
        .unwrap();
    tls.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tls.write_all(b"{}").await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "an oversized frame must close the connection"
    );
    assert!(
        got.is_empty(),
        "and nothing is answered before the hello is complete: {got:?}"
    );

    assert_eq!(
        round_trip(tunnel.addr(0), b"still flowing").await,
        b"still flowing"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let mut config = hub_config(vec![tcp_any("tcp")]);
    config.handshake_timeout = Duration::from_millis(200);
    let hub = start_hub_with(config).await;
    // Silent before TLS.
    let mut raw = TcpStream::connect(hub.addr).await.unwrap();
    let mut sink = Vec::new();
    assert!(
        tokio::time::timeout(DEADLINE, raw.read_to_end(&mut sink))
            .await
            .is_ok()
    );
    // Silent after TLS.
    let mut tls = tls_to(&hub).await;
    assert!(
        tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink))
            .await
            .is_ok()
    );
    // Preamble, then silence before the hello.
    let mut tls = tls_to(&hub).await;
    tls.write_all(&Preamble::new(Channel::Control).encode())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_tunnel_reports_both_versions_when_the_hub_speaks_another() {
    // A hub from the future: answers every preamble with version 2, not accepted.
    let identity = tunnelize::tls::Identity::generate(&["localhost"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(socket).await.unwrap();
        let mut preamble = [0u8; tunnelize::protocol::PREAMBLE_LEN];
        tls.read_exact(&mut preamble).await.unwrap();
        tls.write_all(
            &HubPreamble {
                version: 2,
                accepted: false,
            }
            .encode(),
        )
        .await
        .unwrap();
        tls.shutdown().await.unwrap();
    });
    let fake = TestHub {
        addr,
        services: Default::default(),
        fingerprint: identity.fingerprint(),
        stop: tokio_util::sync::CancellationToken::new(),
        task: tokio::spawn(async {}),
    };
    let config = tunnel_config(&fake, vec![proxy("p", "tcp", addr, None)]);
    let err = tunnelize::tunnel::Tunnel::new(config)
        .unwrap()
        .connect()
        .await
        .err()
        .unwrap();
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("version 2") && text.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{text}"
    );
}
