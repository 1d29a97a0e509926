//! Control-channel messages.
//!
//! Every message travels in an [`Envelope`] with a request id. A reply carries the id of the
//! request it answers (a `Welcome` answers a `Hello`, a `Pong` answers a `Ping`), so replies and
//! heartbeats can never be confused. Unknown fields are ignored, so later minor versions can add
//! optional fields without a version bump; a new message type needs one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::secret::Secret;

/// A message with its request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// Request id: chosen by the sender of a request, echoed by its reply.
    pub id: u64,
    /// The message.
    pub msg: M,
}

/// What a tunnel asks of a hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TunnelMessage {
    /// First message on a control channel: authenticate and register proxies.
    Hello {
        /// The tunnel key; `None` only for hubs in no-auth mode.
        key: Option<Secret>,
        /// A name for logs (host name of the tunnel machine by default).
        name: String,
        /// What the tunnel offers.
        proxies: Vec<ProxyRequest>,
    },
    /// First message on a link connection: bind it to an authenticated session.
    LinkHello {
        /// The session the link belongs to.
        tunnel_id: Uuid,
        /// The session's link token from `Welcome`.
        token: Secret,
    },
    /// First message on a peer connection (hub to hub, in a cluster): which hub dials, with
    /// the token it published in the cluster's Redis for its membership `epoch`.
    PeerHello {
        /// The dialing hub's `[cluster] name`.
        hub: String,
        /// Its fencing token (membership) now.
        epoch: u64,
        /// The peer token of that membership.
        token: Secret,
    },
    /// Heartbeat; the hub answers with `Pong` and the same id.
    Ping,
    /// Answer to a hub's `Ping`.
    Pong,
}

/// One proxy a tunnel asks the hub to expose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRequest {
    /// The proxy's name, unique within the tunnel; link streams name it.
    pub name: String,
    /// The hub service to expose it on.
    pub service: String,
    /// For port-routed services: the port wanted, or `None` for any free one.
    #[serde(default)]
    pub port: Option<u16>,
    /// For host-routed services: a name under the service's domain (`myapp`), or a full
    /// hostname where the hub allows it; `None` for a random name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Load-balancing group: tunnels naming the same group may share one hostname.
    #[serde(default)]
    pub group: Option<String>,
    /// HTTP basic authentication the hub enforces in front of this proxy.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// Largest request body, in bytes, the hub lets through to this proxy.
    #[serde(default)]
    pub max_body: Option<u64>,
}

/// Credentials for HTTP basic authentication; the password only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    /// User name.
    pub user: String,
    /// Password hash in PHC string format (`tunnelize hash-password`).
    pub password_hash: String,
}

/// What a hub says to a tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubMessage {
    /// The tunnel is authenticated; answers `Hello`.
    Welcome {
        /// This session's id, used in logs and by the admin API.
        tunnel_id: Uuid,
        /// Token that authorises link connections for this session.
        link_token: Secret,
        /// Seconds between the tunnel's heartbeats.
        heartbeat_secs: u64,
        /// One outcome per requested proxy, in request order.
        proxies: Vec<ProxyOutcome>,
    },
    /// The link connection is bound to its session; answers `LinkHello` (and `PeerHello`, for
    /// a hub-to-hub link). Multiplexed streams follow on the same connection.
    LinkAccepted,
    /// The request is refused; the hub closes the connection after sending this.
    Refused {
        /// Machine-readable reason.
        code: RefusalCode,
        /// Human-readable explanation, safe to print.
        message: String,
        /// With `locked_out`: seconds until the lockout ends, rounded up; the tunnel makes no
        /// attempt before then. Absent otherwise, and from hubs older than the field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Heartbeat answer, carrying the `Ping`'s id.
    Pong,
    /// Heartbeat from the hub; the tunnel answers with `Pong`.
    Ping,
    /// The hub is ending the session (shutdown, operator disconnect).
    Goodbye {
        /// Why, safe to print.
        reason: String,
    },
}

/// Outcome of one [`ProxyRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProxyOutcome {
    /// The proxy is live.
    Accepted {
        /// Proxy name, as requested.
        name: String,
        /// Public port assigned, for port-routed services.
        port: Option<u16>,
        /// Public hostname assigned, for host-routed services.
        #[serde(default)]
        hostname: Option<String>,
    },
    /// The proxy was not set up; the tunnel's other proxies are unaffected.
    Rejected {
        /// Proxy name, as requested.
        name: String,
        /// Why, safe to print.
        reason: String,
    },
}

/// Why a hub refused a control or link connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Wrong or missing key, or a link token that does not match.
    AuthFailed,
    /// The peer sent something out of order or malformed.
    BadRequest,
    /// A hub limit is reached.
    Limit,
    /// The hub is shutting down.
    ShuttingDown,
    /// The peer's address is locked out after repeated failed logins; `retry_after_secs`
    /// says when to retry (and the message, for people).
    LockedOut,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, encode_frame, testing};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// docs/protocol.md describes every field of a proxy request as it is on the wire.
    #[test]
    fn the_protocol_document_names_every_field_of_the_hello() {
        let doc = include_str!("../../docs/protocol.md");
        let hello = TunnelMessage::Hello {
            key: None,
            name: "n".into(),
            proxies: vec![ProxyRequest {
                basic_auth: Some(BasicAuth {
                    user: "u".into(),
                    password_hash: "h".into(),
                }),
                ..Default::default()
            }],
        };
        let json = serde_json::to_value(&hello).unwrap();
        let proxy = &json["proxies"][0];
        let fields = json
            .as_object()
            .unwrap()
            .keys()
            .chain(proxy.as_object().unwrap().keys())
            .chain(proxy["basic_auth"].as_object().unwrap().keys());
        for field in fields.filter(|f| *f != "type") {
            assert!(
                doc.contains(&format!("`{field}`")),
                "docs/protocol.md lacks `{field}`"
            );
        }
        assert_eq!(
            proxy.as_object().unwrap().len(),
            7,
            "the docs say seven fields"
        );
    }

    /// docs/protocol.md describes every field of a refusal, the optional `retry_after_secs`
    /// included.
    #[test]
    fn the_protocol_document_names_every_field_of_a_refusal() {
        let doc = include_str!("../../docs/protocol.md");
        let refused = HubMessage::Refused {
            code: RefusalCode::LockedOut,
            message: "m".into(),
            retry_after_secs: Some(3),
        };
        let json = serde_json::to_value(&refused).unwrap();
        let fields = json.as_object().unwrap().keys();
        for field in fields.filter(|f| *f != "type") {
            assert!(
                doc.contains(&format!("`{field}`")),
                "docs/protocol.md lacks `{field}`"
            );
        }
        assert_eq!(json.as_object().unwrap().len(), 4, "type and three fields");
        assert!(doc.contains("`locked_out`"));
    }

    /// A hub without `retry_after_secs` is understood, and a refusal without one is sent as
    /// before: peers older than the field see the same frame.
    #[test]
    fn a_refusal_without_a_retry_time_is_the_frame_older_peers_know() {
        let old = r#"{"type":"refused","code":"locked_out","message":"retry in 29m 59s"}"#;
        let decoded: HubMessage = serde_json::from_str(old).unwrap();
        assert_eq!(
            decoded,
            HubMessage::Refused {
                code: RefusalCode::LockedOut,
                message: "retry in 29m 59s".into(),
                retry_after_secs: None,
            }
        );
        assert_eq!(serde_json::to_string(&decoded).unwrap(), old);
        let new = HubMessage::Refused {
            code: RefusalCode::LockedOut,
            message: "m".into(),
            retry_after_secs: Some(1799),
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["retry_after_secs"], 1799);
    }

    fn round_trip<M>(msg: M)
    where
        M: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    {
        let env = Envelope { id: 42, msg };
        let mut buf = BytesMut::new();
        encode_frame(&env, &mut buf).unwrap();
        let back: Envelope<M> = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(back, env);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_tunnel_message_round_trips() {
        round_trip(TunnelMessage::Hello {
            key: Some(Secret::new("k")),
            name: "laptop".into(),
            proxies: vec![
                ProxyRequest {
                    name: "ssh".into(),
                    service: "tcp".into(),
                    port: Some(2222),
                    ..Default::default()
                },
                ProxyRequest {
                    name: "web".into(),
                    service: "http".into(),
                    port: None,
                    hostname: Some("myapp".into()),
                    group: Some("blue".into()),
                    basic_auth: Some(BasicAuth {
                        user: "ann".into(),
                        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                    }),
                    max_body: Some(1 << 20),
                },
            ],
        });
        round_trip(TunnelMessage::Hello {
            key: None,
            name: String::new(),
            proxies: vec![],
        });
        round_trip(TunnelMessage::LinkHello {
            tunnel_id: Uuid::new_v4(),
            token: Secret::random(16),
        });
        round_trip(TunnelMessage::PeerHello {
            hub: "hub-a".into(),
            epoch: 7,
            token: Secret::random(16),
        });
        round_trip(TunnelMessage::Ping);
        round_trip(TunnelMessage::Pong);
    }

    #[test]
    fn every_hub_message_round_trips() {
        round_trip(HubMessage::Welcome {
            tunnel_id: Uuid::new_v4(),
            link_token: Secret::random(16),
            heartbeat_secs: 10,
            proxies: vec![
                ProxyOutcome::Accepted {
                    name: "ssh".into(),
                    port: Some(20001),
                    hostname: None,
                },
                ProxyOutcome::Accepted {
                    name: "web".into(),
                    port: None,
                    hostname: Some("myapp.tunnel.example.com".into()),
                },
                ProxyOutcome::Rejected {
                    name: "db".into(),
                    reason: "port 5432 is taken".into(),
                },
            ],
        });
        round_trip(HubMessage::LinkAccepted);
        for code in [
            RefusalCode::AuthFailed,
            RefusalCode::BadRequest,
            RefusalCode::Limit,
            RefusalCode::ShuttingDown,
        ] {
            round_trip(HubMessage::Refused {
                code,
                message: "no".into(),
                retry_after_secs: None,
            });
        }
        round_trip(HubMessage::Refused {
            code: RefusalCode::LockedOut,
            message: "locked out".into(),
            retry_after_secs: Some(1800),
        });
        round_trip(HubMessage::Pong);
        round_trip(HubMessage::Ping);
        round_trip(HubMessage::Goodbye {
            reason: "operator".into(),
        });
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let json = br#"{"id":3,"msg":{"type":"ping","future":true},"extra":1}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
        buf.extend_from_slice(json);
        let env: Envelope<TunnelMessage> = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            env,
            Envelope {
                id: 3,
                msg: TunnelMessage::Ping
            }
        );
    }

    /// Adds `field: value` to the envelope's object and to its message's, where not taken.
    fn with_unknown_field(json: &mut serde_json::Value, field: &str, value: &serde_json::Value) {
        if let Some(top) = json.as_object_mut() {
            if let Some(msg) = top.get_mut("msg").and_then(|m| m.as_object_mut()) {
                msg.entry(field).or_insert_with(|| value.clone());
            }
            top.entry(field).or_insert_with(|| value.clone());
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            testing::text(12).prop_map(serde_json::Value::from),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(serde_json::Value::from),
        ]
    }

    proptest! {
        #![proptest_config(testing::config(128))]

        #[test]
        fn unknown_fields_never_change_a_tunnel_message(
            env in testing::envelope(testing::tunnel_message()),
            field in "[a-z_]{1,12}",
            value in json_value(),
        ) {
            let mut json = serde_json::to_value(&env).unwrap();
            with_unknown_field(&mut json, &field, &value);
            let back: Envelope<TunnelMessage> = serde_json::from_value(json).unwrap();
            prop_assert_eq!(back, env);
        }

        #[test]
        fn unknown_fields_never_change_a_hub_message(
            env in testing::envelope(testing::hub_message()),
            field in "[a-z_]{1,12}",
            value in json_value(),
        ) {
            let mut json = serde_json::to_value(&env).unwrap();
            with_unknown_field(&mut json, &field, &value);
            let back: Envelope<HubMessage> = serde_json::from_value(json).unwrap();
            prop_assert_eq!(back, env);
        }
    }

    #[test]
    fn debug_of_a_hello_does_not_show_the_key() {
        let hello = TunnelMessage::Hello {
            key: Some(Secret::new("s3cr3t-key")),
            name: "n".into(),
            proxies: vec![],
        };
        assert!(!format!("{hello:?}").contains("s3cr3t"));
    }
}
