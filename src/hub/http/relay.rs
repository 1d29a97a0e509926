//! A target's response on its way back to the client: hop-by-hop headers removed and the body
//! metered, or, for a `101 Switching Protocols`, a task that splices the upgraded client and
//! target connections until either closes (the only task spawned per request, and only for
//! upgrades). Nothing here waits on the target; the body streams as the client reads it.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug};

use super::Frontend;
use super::body::{Body, Watched};
use super::headers::strip_hop_by_hop;
use super::metered::{Direction, Metered};
use super::request::Upgrade;
use crate::hub::clients::ClientGuard;
use crate::mux::Meter;

/// A target's response with what relaying it needs.
pub(super) struct Relay {
    pub response: Response<Incoming>,
    pub meter: Meter,
    pub client: Arc<ClientGuard>,
}

/// Relays a target's response to the client: the upgraded connection, or the response with
/// its body metered. `upgrade`: the client asked for one.
pub(super) fn finish(
    front: &Frontend,
    relay: Relay,
    client_upgrade: Option<Upgrade>,
    upgrade: bool,
) -> Response<Body> {
    if relay.response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        return switch_protocols(front, relay, client_upgrade);
    }
    let Relay {
        response,
        meter,
        client,
    } = relay;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The hub speaks HTTP/1.1 to its clients whatever the target spoke (RFC 9110 6.2);
    // hyper answers a 1.0 client in 1.0 itself.
    parts.version = http::Version::HTTP_11;
    if upgrade {
        // The upgrade was refused: whatever the client sends next was not inspected as HTTP.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let metered = Metered::new(meter, Direction::Out, client);
    let body = Watched::new(body.map_err(Into::into).boxed(), metered);
    Response::from_parts(parts, body.boxed())
}

/// Passes the 101 on to the client and spawns the task that splices the two connections once
/// both sides have switched.
fn switch_protocols(front: &Frontend, relay: Relay, client_upgrade: Upgrade) -> Response<Body> {
    let Relay {
        mut response,
        meter,
        client,
    } = relay;
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    front
        .shared
        .tasks
        .spawn(splice(client_upgrade, upstream_upgrade, meter, client).in_current_span());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

/// Copies both ways between the upgraded client and target connections until either closes
/// or the hub disconnects the client (`listed` is cancelled), then meters what was copied.
async fn splice(
    client_upgrade: Upgrade,
    upstream_upgrade: OnUpgrade,
    meter: Meter,
    listed: Arc<ClientGuard>,
) {
    let Upgrade { on, place: _place } = client_upgrade;
    let (client, upstream) = match tokio::try_join!(on, upstream_upgrade) {
        Ok(both) => both,
        Err(e) => return debug!(error = %e, "upgrade failed"),
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => {
                meter.add_in(up as usize);
                meter.add_out(down as usize);
                debug!(up, down, "upgraded connection closed");
            }
            Err(e) => debug!(error = %e, "upgraded connection ended with an error"),
        },
        () = listed.cancelled() => debug!("upgraded connection disconnected by the hub"),
    }
}
