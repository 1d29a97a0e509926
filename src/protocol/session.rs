//! The protocol steps of one control session, as a state machine with no I/O.
//!
//! A control session runs: the tunnel's `hello` (the connection's first frame, and only there)
//! -> the hub's answer, `welcome` or `refused` (and the end) -> heartbeats until one side
//! leaves. This module decides, for each event, what the I/O code must do next: send a frame,
//! tell a waiting claim that a liveness check was answered, or end the session with a reason.
//! Events are a frame that arrived, a deadline that passed, a liveness check the hub asks for
//! and the hub ending the session. It reads no clock (every timed event carries `now`, and
//! [`HubHeartbeats::deadline`] says when to call back), owns no socket and spawns nothing, so
//! its tests need neither; `hub::control` drives the hub's half over a real connection.
//!
//! The hub's half goes through three types, each only able to do what its step allows:
//! [`admit_hello`] takes the first frame and gives an [`Admission`] (the hello is in; the hub
//! checks its key, lockout and limits, and claims its proxies), which either refuses or
//! welcomes and becomes [`HubHeartbeats`]. What the checks decide is the hub's business, not
//! this module's: it only carries the hello in and the verdict out.
//!
//! The tunnel's half of the heartbeats is [`TunnelHeartbeats`]: it pings on every tick, answers
//! the hub's liveness checks with their id, and ends on a goodbye or on silence.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use uuid::Uuid;

use super::{
    Envelope, HEARTBEAT_MISSES, HubMessage, ProxyOutcome, ProxyRequest, RefusalCode, TunnelMessage,
    encode_frame,
};
use crate::secret::Secret;

/// How long a tunnel has to answer a liveness check (a ping from the hub).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Id of the first request the hub makes on a control connection; later ones count up from it.
/// A tunnel's requests count up from 1 ([`TUNNEL_HELLO_ID`]), so the two never meet.
pub const HUB_REQUEST_IDS: u64 = 1 << 63;

/// Id of a tunnel's hello; its heartbeats count up from the next one.
pub const TUNNEL_HELLO_ID: u64 = 1;

/// A refusal of a connection's first frame: sent as `refused`, and the hub closes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// What the tunnel prints: why, and what would help.
    pub message: String,
    /// For a lockout: whole seconds until it ends, rounded up (`retry_after_secs`).
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    /// A refusal with `code`, explained by `message`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A `locked_out` refusal for a lockout that ends in `left`: the retry time is announced
    /// in whole seconds, rounded up (at least 1), so a tunnel that waits it out never comes
    /// back before the lockout is over.
    pub fn locked_out(left: Duration, message: impl Into<String>) -> Self {
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Refusal {
            code: RefusalCode::LockedOut,
            message: message.into(),
            retry_after_secs: Some(secs.max(1)),
        }
    }

    /// The `refused` frame answering the request with id `id`.
    pub fn answer(self, id: u64) -> Envelope<HubMessage> {
        Envelope {
            id,
            msg: HubMessage::Refused {
                code: self.code,
                message: self.message,
                retry_after_secs: self.retry_after_secs,
            },
        }
    }
}

/// What a tunnel's hello asks for, for the hub to check and set up.
#[derive(Debug)]
pub struct Hello {
    /// The tunnel key; `None` only for hubs in no-auth mode.
    pub key: Option<Secret>,
    /// The tunnel's name, for logs.
    pub name: String,
    /// The proxies it offers, in its order; the welcome answers each in the same order.
    pub proxies: Vec<ProxyRequest>,
}

/// The connection's first frame, which must be a hello: the hello and its [`Admission`], or
/// the `refused` frame to send (`bad_request`) before closing.
pub fn admit_hello(
    first: Envelope<TunnelMessage>,
) -> Result<(Admission, Hello), Envelope<HubMessage>> {
    match first.msg {
        TunnelMessage::Hello { key, name, proxies } => Ok((
            Admission { hello_id: first.id },
            Hello { key, name, proxies },
        )),
        _ => Err(Refusal::new(RefusalCode::BadRequest, "expected a hello").answer(first.id)),
    }
}

/// A hello the hub is checking and setting up; its answer carries the hello's id.
#[derive(Debug)]
pub struct Admission {
    hello_id: u64,
}

/// What the hub tells a tunnel it accepts (the fields of `welcome`).
#[derive(Debug)]
pub struct Welcome {
    /// The session's id.
    pub tunnel_id: Uuid,
    /// The token the session's link connections present.
    pub link_token: Secret,
    /// The interval the tunnel pings at, in whole seconds; the hub judges it by the same.
    pub heartbeat_secs: u64,
    /// One outcome per requested proxy, in request order.
    pub proxies: Vec<ProxyOutcome>,
}

impl Admission {
    /// Refuses the hello: the frame to send before closing.
    pub fn refuse(self, refusal: Refusal) -> Envelope<HubMessage> {
        refusal.answer(self.hello_id)
    }

    /// Welcomes the tunnel at `now`: the frame to send, and the heartbeats that follow. A
    /// welcome too large for one frame could never be sent: then the admission comes back in
    /// `Err`, to be refused.
    pub fn welcome(
        self,
        now: Instant,
        welcome: Welcome,
    ) -> Result<(Envelope<HubMessage>, HubHeartbeats), Admission> {
        let silence = Duration::from_secs(welcome.heartbeat_secs) * HEARTBEAT_MISSES;
        let frame = Envelope {
            id: self.hello_id,
            msg: HubMessage::Welcome {
                tunnel_id: welcome.tunnel_id,
                link_token: welcome.link_token,
                heartbeat_secs: welcome.heartbeat_secs,
                proxies: welcome.proxies,
            },
        };
        if encode_frame(&frame, &mut BytesMut::new()).is_err() {
            return Err(self);
        }
        let heartbeats = HubHeartbeats {
            silence,
            heard_by: now + silence,
            probe: None,
            next_id: HUB_REQUEST_IDS,
        };
        Ok((frame, heartbeats))
    }
}

/// What the hub does after an event of a welcomed session.
#[derive(Debug, PartialEq)]
pub enum HubStep {
    /// Nothing: wait for the next event.
    Wait,
    /// Send this frame.
    Send(Envelope<HubMessage>),
    /// The tunnel answered the liveness check: tell whoever asked for it.
    ProbeAnswered,
    /// The session is over; close the connection without sending anything more.
    End(SessionEnd),
}

/// Why a welcomed session ended without either side saying goodbye.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionEnd {
    /// The peer sent nothing for this long (heartbeat intervals times [`HEARTBEAT_MISSES`]).
    /// The wording is that of the read deadline a silent peer also hits.
    #[error("the peer sent nothing for {0:?} while sending heartbeats")]
    Silent(Duration),
    /// The tunnel did not answer the hub's ping within [`PROBE_TIMEOUT`].
    #[error(
        "the tunnel did not answer a liveness check within {PROBE_TIMEOUT:?} (another tunnel of \
         its key asked for its ports or hostnames)"
    )]
    ProbeUnanswered,
    /// The peer sent a message that has no place in a running session (its `Debug`).
    #[error("protocol error: unexpected message {0}")]
    Unexpected(String),
}

/// A liveness check in flight: the ping's id and when its answer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    id: u64,
    due: Instant,
}

/// The hub's half of a welcomed session: answers the tunnel's pings, runs liveness checks, and
/// notices silence.
#[derive(Debug)]
pub struct HubHeartbeats {
    /// How long the tunnel may stay silent.
    silence: Duration,
    /// When it is silent for too long, unless a frame arrives before.
    heard_by: Instant,
    probe: Option<Probe>,
    /// Id of the hub's next request.
    next_id: u64,
}

impl HubHeartbeats {
    /// How long the tunnel may stay silent before the session is lost.
    pub fn silence(&self) -> Duration {
        self.silence
    }

    /// When [`HubHeartbeats::handle_timeout`] is due, if no event comes first.
    pub fn deadline(&self) -> Instant {
        match self.probe {
            Some(probe) => probe.due.min(self.heard_by),
            None => self.heard_by,
        }
    }

    /// Whether a liveness check is in flight; another is asked for only after it.
    pub fn is_probing(&self) -> bool {
        self.probe.is_some()
    }

    /// A frame from the tunnel arrived at `now`.
    pub fn handle_message(&mut self, now: Instant, frame: Envelope<TunnelMessage>) -> HubStep {
        self.heard_by = now + self.silence;
        match frame.msg {
            TunnelMessage::Ping => HubStep::Send(Envelope {
                id: frame.id,
                msg: HubMessage::Pong,
            }),
            TunnelMessage::Pong => match self.probe {
                Some(probe) if probe.id == frame.id => {
                    self.probe = None;
                    HubStep::ProbeAnswered
                }
                // Unasked for, or the answer to another id: not an answer to this check.
                _ => HubStep::Wait,
            },
            other => HubStep::End(SessionEnd::Unexpected(format!("{other:?}"))),
        }
    }

    /// The deadline passed; `now` is the time.
    pub fn handle_timeout(&mut self, now: Instant) -> HubStep {
        match self.probe {
            Some(probe) if probe.due <= now => HubStep::End(SessionEnd::ProbeUnanswered),
            _ if self.heard_by <= now => HubStep::End(SessionEnd::Silent(self.silence)),
            _ => HubStep::Wait,
        }
    }

    /// The hub wants to know, at `now`, that the tunnel is still there: a ping whose `pong`
    /// must come back within [`PROBE_TIMEOUT`]. Waits while a check is already in flight.
    pub fn probe(&mut self, now: Instant) -> HubStep {
        if self.probe.is_some() {
            return HubStep::Wait;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.probe = Some(Probe {
            id,
            due: now + PROBE_TIMEOUT,
        });
        HubStep::Send(Envelope {
            id,
            msg: HubMessage::Ping,
        })
    }

    /// The hub ends the session: the goodbye to send (it answers nothing, so its id is 0).
    pub fn goodbye(self, reason: &str) -> Envelope<HubMessage> {
        Envelope {
            id: 0,
            msg: HubMessage::Goodbye {
                reason: reason.to_owned(),
            },
        }
    }
}

/// What the tunnel does after an event of a welcomed session.
#[derive(Debug, PartialEq)]
pub enum TunnelStep {
    /// Nothing: wait for the next event.
    Wait,
    /// Send this frame.
    Send(Envelope<TunnelMessage>),
    /// The session is over; close the connection.
    End(TunnelEnd),
}

/// Why a welcomed session ended on the tunnel's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The hub said goodbye, for this reason.
    Goodbye(String),
    /// The hub sent nothing for this long.
    Silent(Duration),
    /// The hub sent a message that has no place in a running session (its `Debug`).
    Unexpected(String),
}

/// The tunnel's half of a welcomed session: pings at every tick, answers the hub's liveness
/// checks, and notices a hub that went silent.
#[derive(Debug)]
pub struct TunnelHeartbeats {
    silence: Duration,
    heard_by: Instant,
    /// Id of the tunnel's next ping.
    next_id: u64,
}

impl TunnelHeartbeats {
    /// The heartbeats of a session welcomed at `now` with a `heartbeat` interval.
    pub fn new(now: Instant, heartbeat: Duration) -> Self {
        let silence = heartbeat * HEARTBEAT_MISSES;
        TunnelHeartbeats {
            silence,
            heard_by: now + silence,
            next_id: TUNNEL_HELLO_ID + 1,
        }
    }

    /// How long the hub may stay silent before the session is lost.
    pub fn silence(&self) -> Duration {
        self.silence
    }

    /// When [`TunnelHeartbeats::handle_timeout`] is due, if no frame comes first.
    pub fn deadline(&self) -> Instant {
        self.heard_by
    }

    /// A heartbeat interval passed: the ping to send.
    pub fn tick(&mut self) -> Envelope<TunnelMessage> {
        let id = self.next_id;
        self.next_id += 1;
        Envelope {
            id,
            msg: TunnelMessage::Ping,
        }
    }

    /// A frame from the hub arrived at `now`.
    pub fn handle_message(&mut self, now: Instant, frame: Envelope<HubMessage>) -> TunnelStep {
        self.heard_by = now + self.silence;
        match frame.msg {
            HubMessage::Pong => TunnelStep::Wait,
            // The hub checks the tunnel is still here: answer at once, with its id.
            HubMessage::Ping => TunnelStep::Send(Envelope {
                id: frame.id,
                msg: TunnelMessage::Pong,
            }),
            HubMessage::Goodbye { reason } => TunnelStep::End(TunnelEnd::Goodbye(reason)),
            other => TunnelStep::End(TunnelEnd::Unexpected(format!("{other:?}"))),
        }
    }

    /// The deadline passed; `now` is the time.
    pub fn handle_timeout(&mut self, now: Instant) -> TunnelStep {
        match self.heard_by <= now {
            true => TunnelStep::End(TunnelEnd::Silent(self.silence)),
            false => TunnelStep::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn hello(id: u64) -> Envelope<TunnelMessage> {
        Envelope {
            id,
            msg: TunnelMessage::Hello {
                key: Some(Secret::new("k")),
                name: "laptop".into(),
                proxies: vec![ProxyRequest {
                    name: "ssh".into(),
                    service: "tcp".into(),
                    ..Default::default()
                }],
            },
        }
    }

    fn welcome(heartbeat_secs: u64) -> Welcome {
        Welcome {
            tunnel_id: Uuid::new_v4(),
            link_token: Secret::random(32),
            heartbeat_secs,
            proxies: vec![],
        }
    }

    /// A session welcomed at `start` with a 10 s heartbeat (30 s of silence allowed).
    fn welcomed(start: Instant) -> HubHeartbeats {
        let (admission, _) = admit_hello(hello(1)).expect("a hello");
        let (_, heartbeats) = admission.welcome(start, welcome(10)).expect("fits");
        heartbeats
    }

    fn from_tunnel(id: u64, msg: TunnelMessage) -> Envelope<TunnelMessage> {
        Envelope { id, msg }
    }

    #[test]
    fn a_first_frame_that_is_not_a_hello_is_refused_as_a_bad_request_with_its_id() {
        for first in [TunnelMessage::Ping, TunnelMessage::Pong] {
            let refused = admit_hello(from_tunnel(7, first)).expect_err("not a hello");
            assert_eq!(
                refused,
                Envelope {
                    id: 7,
                    msg: HubMessage::Refused {
                        code: RefusalCode::BadRequest,
                        message: "expected a hello".into(),
                        retry_after_secs: None,
                    },
                }
            );
        }
    }

    #[test]
    fn a_hello_after_the_welcome_is_a_protocol_error() {
        let start = Instant::now();
        let mut session = welcomed(start);
        let step = session.handle_message(start + SECOND, hello(2));
        let HubStep::End(end) = step else {
            panic!("a second hello must end the session, got {step:?}");
        };
        assert!(matches!(end, SessionEnd::Unexpected(_)));
        let text = end.to_string();
        assert!(text.starts_with("protocol error: unexpected message Hello"));
        assert!(!text.contains("\"k\""), "the key never shows: {text}");
    }

    #[test]
    fn a_lockout_refusal_announces_whole_seconds_rounded_up() {
        for (left, secs) in [
            (Duration::from_millis(2300), 3),
            (Duration::from_secs(3), 3),
            (Duration::from_millis(1), 1),
            (Duration::ZERO, 1),
            (Duration::from_secs(1800), 1800),
        ] {
            let refusal = Refusal::locked_out(left, "locked");
            assert_eq!(refusal.code, RefusalCode::LockedOut);
            assert_eq!(refusal.retry_after_secs, Some(secs), "{left:?}");
            let frame = refusal.answer(9);
            assert!(matches!(
                frame.msg,
                HubMessage::Refused { retry_after_secs: Some(s), .. } if s == secs
            ));
        }
        assert_eq!(
            Refusal::new(RefusalCode::Limit, "full").retry_after_secs,
            None
        );
    }

    #[test]
    fn the_answer_to_a_hello_carries_the_hellos_id() {
        let (admission, asked) = admit_hello(hello(42)).expect("a hello");
        assert_eq!(asked.name, "laptop");
        assert_eq!(asked.proxies.len(), 1);
        let refused = admission.refuse(Refusal::new(RefusalCode::Limit, "full"));
        assert_eq!(refused.id, 42);
        assert!(matches!(
            refused.msg,
            HubMessage::Refused {
                code: RefusalCode::Limit,
                ..
            }
        ));

        let (admission, _) = admit_hello(hello(43)).expect("a hello");
        let (frame, _) = admission
            .welcome(Instant::now(), welcome(10))
            .expect("fits");
        assert_eq!(frame.id, 43);
        assert!(matches!(
            frame.msg,
            HubMessage::Welcome {
                heartbeat_secs: 10,
                ..
            }
        ));
    }

    #[test]
    fn a_welcome_too_large_for_one_frame_gives_the_admission_back_to_be_refused() {
        let (admission, _) = admit_hello(hello(5)).expect("a hello");
        let mut big = welcome(10);
        big.proxies = (0..2000)
            .map(|i| ProxyOutcome::Rejected {
                name: format!("proxy-{i}"),
                reason: "a reason long enough to fill the frame quickly".into(),
            })
            .collect();
        let admission = admission
            .welcome(Instant::now(), big)
            .expect_err("over MAX_FRAME_LEN");
        let refused = admission.refuse(Refusal::new(RefusalCode::Limit, "declare fewer"));
        assert_eq!(refused.id, 5);
    }

    #[test]
    fn a_ping_from_the_tunnel_gets_a_pong_with_the_same_id() {
        let start = Instant::now();
        let mut session = welcomed(start);
        for id in [2, 3, u64::MAX] {
            assert_eq!(
                session.handle_message(start, from_tunnel(id, TunnelMessage::Ping)),
                HubStep::Send(Envelope {
                    id,
                    msg: HubMessage::Pong
                })
            );
        }
    }

    #[test]
    fn the_hubs_own_requests_count_from_the_top_half_of_the_id_space() {
        let start = Instant::now();
        let mut session = welcomed(start);
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                let HubStep::Send(ping) = session.probe(start + SECOND * i) else {
                    panic!("a probe sends a ping");
                };
                assert_eq!(ping.msg, HubMessage::Ping);
                let answered = session.handle_message(
                    start + SECOND * i,
                    from_tunnel(ping.id, TunnelMessage::Pong),
                );
                assert_eq!(answered, HubStep::ProbeAnswered);
                ping.id
            })
            .collect();
        assert_eq!(
            ids,
            [HUB_REQUEST_IDS, HUB_REQUEST_IDS + 1, HUB_REQUEST_IDS + 2]
        );
    }

    #[test]
    fn a_second_probe_waits_for_the_first() {
        let start = Instant::now();
        let mut session = welcomed(start);
        assert!(matches!(session.probe(start), HubStep::Send(_)));
        assert!(session.is_probing());
        assert_eq!(session.probe(start), HubStep::Wait);
        assert_eq!(session.deadline(), start + PROBE_TIMEOUT);
    }

    #[test]
    fn a_pong_with_a_wrong_id_does_not_answer_the_liveness_check() {
        let start = Instant::now();
        let mut session = welcomed(start);
        let HubStep::Send(ping) = session.probe(start) else {
            panic!("a probe sends a ping");
        };
        let wrong = from_tunnel(ping.id + 1, TunnelMessage::Pong);
        assert_eq!(session.handle_message(start, wrong), HubStep::Wait);
        assert!(session.is_probing(), "still waiting for the right answer");
        assert_eq!(
            session.handle_timeout(start + PROBE_TIMEOUT),
            HubStep::End(SessionEnd::ProbeUnanswered)
        );
    }

    #[test]
    fn an_unasked_pong_is_ignored() {
        let start = Instant::now();
        let mut session = welcomed(start);
        let pong = from_tunnel(HUB_REQUEST_IDS, TunnelMessage::Pong);
        assert_eq!(session.handle_message(start, pong), HubStep::Wait);
    }

    #[test]
    fn a_liveness_check_unanswered_in_time_loses_the_session_even_while_pings_arrive() {
        let start = Instant::now();
        let mut session = welcomed(start);
        assert!(matches!(session.probe(start), HubStep::Send(_)));
        let ping = from_tunnel(2, TunnelMessage::Ping);
        assert!(matches!(
            session.handle_message(start + SECOND, ping),
            HubStep::Send(_)
        ));
        assert_eq!(
            session.handle_timeout(start + PROBE_TIMEOUT - Duration::from_millis(1)),
            HubStep::Wait
        );
        let end = session.handle_timeout(start + PROBE_TIMEOUT);
        assert_eq!(end, HubStep::End(SessionEnd::ProbeUnanswered));
        assert!(
            SessionEnd::ProbeUnanswered
                .to_string()
                .contains("did not answer a liveness check within 3s")
        );
    }

    #[test]
    fn missed_heartbeats_lose_the_session_and_any_frame_restarts_the_count() {
        let start = Instant::now();
        let mut session = welcomed(start);
        let silence = 10 * SECOND * HEARTBEAT_MISSES;
        assert_eq!(session.silence(), silence);
        assert_eq!(session.deadline(), start + silence);
        assert_eq!(
            session.handle_timeout(start + silence - SECOND),
            HubStep::Wait
        );

        let later = start + 20 * SECOND;
        session.handle_message(later, from_tunnel(2, TunnelMessage::Ping));
        assert_eq!(session.deadline(), later + silence);
        assert_eq!(session.handle_timeout(start + silence), HubStep::Wait);
        assert_eq!(
            session.handle_timeout(later + silence),
            HubStep::End(SessionEnd::Silent(silence))
        );
        assert_eq!(
            SessionEnd::Silent(silence).to_string(),
            "the peer sent nothing for 30s while sending heartbeats"
        );
    }

    #[test]
    fn the_goodbye_carries_the_reason_and_answers_nothing() {
        let session = welcomed(Instant::now());
        assert_eq!(
            session.goodbye("operator"),
            Envelope {
                id: 0,
                msg: HubMessage::Goodbye {
                    reason: "operator".into()
                }
            }
        );
    }

    #[test]
    fn the_tunnel_pings_with_ids_after_its_hellos() {
        let mut tunnel = TunnelHeartbeats::new(Instant::now(), 10 * SECOND);
        let ids: Vec<u64> = (0..3).map(|_| tunnel.tick().id).collect();
        assert_eq!(ids, [2, 3, 4]);
        assert_eq!(tunnel.tick().msg, TunnelMessage::Ping);
    }

    #[test]
    fn the_tunnel_answers_a_hub_ping_with_its_id_and_ends_on_goodbye() {
        let start = Instant::now();
        let mut tunnel = TunnelHeartbeats::new(start, 10 * SECOND);
        let ping = Envelope {
            id: HUB_REQUEST_IDS,
            msg: HubMessage::Ping,
        };
        assert_eq!(
            tunnel.handle_message(start, ping),
            TunnelStep::Send(Envelope {
                id: HUB_REQUEST_IDS,
                msg: TunnelMessage::Pong
            })
        );
        let pong = Envelope {
            id: 2,
            msg: HubMessage::Pong,
        };
        assert_eq!(tunnel.handle_message(start, pong), TunnelStep::Wait);
        let bye = Envelope {
            id: 0,
            msg: HubMessage::Goodbye {
                reason: "stopping".into(),
            },
        };
        assert_eq!(
            tunnel.handle_message(start, bye),
            TunnelStep::End(TunnelEnd::Goodbye("stopping".into()))
        );
    }

    #[test]
    fn the_tunnel_takes_a_second_welcome_as_a_protocol_error() {
        let start = Instant::now();
        let mut tunnel = TunnelHeartbeats::new(start, 10 * SECOND);
        let frame = Envelope {
            id: 1,
            msg: HubMessage::LinkAccepted,
        };
        assert_eq!(
            tunnel.handle_message(start, frame),
            TunnelStep::End(TunnelEnd::Unexpected("LinkAccepted".into()))
        );
    }

    #[test]
    fn the_tunnel_gives_up_on_a_silent_hub_after_the_missed_heartbeats() {
        let start = Instant::now();
        let mut tunnel = TunnelHeartbeats::new(start, 2 * SECOND);
        let silence = 2 * SECOND * HEARTBEAT_MISSES;
        assert_eq!(tunnel.deadline(), start + silence);
        tunnel.tick();
        assert_eq!(tunnel.handle_timeout(start + SECOND), TunnelStep::Wait);
        let pong = Envelope {
            id: 2,
            msg: HubMessage::Pong,
        };
        tunnel.handle_message(start + SECOND, pong);
        assert_eq!(tunnel.handle_timeout(start + silence), TunnelStep::Wait);
        assert_eq!(
            tunnel.handle_timeout(start + SECOND + silence),
            TunnelStep::End(TunnelEnd::Silent(silence))
        );
    }
}
