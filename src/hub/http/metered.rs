//! A body wrapper that counts the bytes of a proxied request or response into the client's
//! meter, keeps the client listed in the hub's table while the body is in flight, and ends the
//! body with an error when an operator disconnects the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::upstream::{Body as ProxyBody, BoxError};
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

/// A body whose data frames are counted; see the module docs.
pub struct Metered {
    inner: ProxyBody,
    meter: Meter,
    direction: Direction,
    /// Held only to keep the client listed while the body lives.
    _client: Arc<ClientGuard>,
    disconnected: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(
        inner: ProxyBody,
        meter: Meter,
        direction: Direction,
        client: Arc<ClientGuard>,
    ) -> Self {
        let disconnected = Box::pin(client.entry().cancel.clone().cancelled_owned());
        Metered {
            inner,
            meter,
            direction,
            _client: client,
            disconnected,
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.disconnected.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("the client was disconnected by the hub".into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            match self.direction {
                Direction::In => self.meter.add_in(data.len()),
                Direction::Out => self.meter.add_out(data.len()),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
