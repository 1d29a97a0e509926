//! The [`Watch`] that counts the bytes of a proxied request or response into the client's
//! meter, keeps the client listed in the hub's table while the body is in flight, and ends the
//! body with an error when an operator disconnects the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_util::sync::WaitForCancellationFutureOwned;

use super::body::{Polled, Watch};
use crate::hub::clients::ClientGuard;
use crate::mux::Meter;

/// Which way a body goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client toward the target (a request body).
    In,
    /// From the target toward the client (a response body).
    Out,
}

/// The metering of one body; see the module docs. Wrap a body in it with
/// [`Watched`](super::body::Watched).
pub struct Metered {
    meter: Meter,
    direction: Direction,
    /// Held only to keep the client listed while the body lives.
    _client: Arc<ClientGuard>,
    disconnected: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Metered {
    /// Meters a body going `direction` for `client`.
    pub fn new(meter: Meter, direction: Direction, client: Arc<ClientGuard>) -> Self {
        let disconnected = Box::pin(client.entry().cancel.clone().cancelled_owned());
        Metered {
            meter,
            direction,
            _client: client,
            disconnected,
        }
    }
}

impl Watch for Metered {
    fn before(&mut self, cx: &mut Context<'_>) -> Option<Polled> {
        self.disconnected
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| Poll::Ready(Some(Err("the client was disconnected by the hub".into()))))
    }

    fn after(&mut self, polled: &Polled) {
        if let Poll::Ready(Some(Ok(frame))) = polled
            && let Some(data) = frame.data_ref()
        {
            match self.direction {
                Direction::In => self.meter.add_in(data.len()),
                Direction::Out => self.meter.add_out(data.len()),
            }
        }
    }
}
