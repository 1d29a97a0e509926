//! Routing one try of a request: the next backend of its hostname that it has not tried yet
//! (from the table in [`super::routes`]), and the client's admission to that backend (basic
//! auth, declared body size, the limits on concurrent clients). It sends nothing upstream.

use std::sync::Arc;

use http::{Response, StatusCode};
use tracing::{debug, warn};

use super::body::Body;
use super::request::ClientRequest;
use super::routes::Backend;
use super::upstream::UpstreamError;
use super::{Frontend, pages};
use crate::hub::clients::ClientGuard;
use crate::hub::metrics::Rejection;

/// A backend to try, with the client listed on it.
pub(super) struct Routed {
    pub backend: Arc<Backend>,
    pub client: ClientGuard,
}

/// The next backend to try for `request` (its id added to `tried`), with the client admitted;
/// or the page the hub answers instead. `last_error` is why the previous try failed, for the
/// 502 when no backend is left.
pub(super) async fn route(
    front: &Frontend,
    request: &ClientRequest,
    tried: &mut Vec<u64>,
    last_error: Option<UpstreamError>,
) -> Result<Routed, Response<Body>> {
    let host = &request.host;
    let Some(backend) = front.shared.hosts.pick_untried(&front.name, host, tried) else {
        return Err(no_backend_left(
            front,
            request,
            tried.is_empty(),
            last_error,
        ));
    };
    tried.push(backend.id);
    if let Some(auth) = &backend.auth
        && !front.auth.check(auth, request.presented.as_deref()).await
    {
        return Err(pages::auth_required());
    }
    if let Some(limit) = backend.max_body
        && request.declared.is_some_and(|n| n > limit)
    {
        return Err(pages::too_large(&front.shared.metrics));
    }
    let limits = front.shared.current().limits;
    let opened = front.shared.registry.try_open_client(
        &backend.session,
        &front.name,
        &backend.proxy,
        request.peer,
        &limits,
    );
    match opened {
        Ok(client) => Ok(Routed { backend, client }),
        Err(limit) => {
            if front.shared.metrics.reject_at_limit() {
                let (tunnel_id, peer) = (backend.session.id, request.peer);
                warn!(service = %front.name, %tunnel_id, %peer, %host, %limit, "request refused (logged at most every 10s; counted in tunnelize_rejected_total)");
            }
            Err(pages::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is at its limit of concurrent clients; try again shortly.",
                true,
            ))
        }
    }
}

/// 404 when no tunnel serves the hostname, 502 when every backend was tried.
fn no_backend_left(
    front: &Frontend,
    request: &ClientRequest,
    none_tried: bool,
    last_error: Option<UpstreamError>,
) -> Response<Body> {
    let host = &request.host;
    if none_tried {
        debug!(peer = %request.peer, %host, "no tunnel for host");
        front.shared.metrics.reject(Rejection::UnknownHost);
        return pages::unknown_host(host);
    }
    front.shared.metrics.reject(Rejection::TargetUnreachable);
    pages::bad_gateway(host, &last_error.unwrap_or(UpstreamError::LinkTimeout))
}
