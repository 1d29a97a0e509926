//! Public ports of `tcp` and `udp` services: which port a tunnel's request comes to, claiming it
//! in the registry for the tunnel, and binding it.
//!
//! A request names a port in the service's range, or none (any free port of the range, tried
//! from a random offset so concurrent tunnels rarely race for the same one); a service whose
//! range is `0` lets the operating system pick. A port is claimed before it is bound, and the
//! claim is given back when the bind fails, so no two tunnels ever hold one port. This module
//! is the same for both kinds of socket ([`PublicSocket`]); it does not serve a port, and it
//! never releases a claim that bound (the serving loop does, once its socket is closed).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, UdpSocket};
use uuid::Uuid;

use super::registry::Registry;
use crate::config::PortRange;
use crate::protocol::Transport;

/// A kind of socket a public port is bound for.
pub(super) trait PublicSocket: Sized {
    /// Where its ports are claimed: a TCP and a UDP proxy may hold the same number.
    const TRANSPORT: Transport;
    /// How messages to the tunnel name one of its ports ("port 22", "udp port 53").
    const PORT: &'static str;
    /// What messages to the tunnel call binding it ("cannot listen on port 22").
    const BINDING: &'static str;

    /// Binds `addr` (port 0: one the operating system picks).
    fn bind(addr: SocketAddr) -> io::Result<Self>;

    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl PublicSocket for TcpListener {
    const TRANSPORT: Transport = Transport::Tcp;
    const PORT: &'static str = "port";
    const BINDING: &'static str = "listen on";

    fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

impl PublicSocket for UdpSocket {
    const TRANSPORT: Transport = Transport::Udp;
    const PORT: &'static str = "udp port";
    const BINDING: &'static str = "bind";

    fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

/// The public ports of one service, as a request for a port sees them.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServicePorts<'a> {
    /// The service's name, for messages.
    pub service: &'a str,
    /// The address its ports are bound on.
    pub listen: IpAddr,
    /// The ports it offers.
    pub range: PortRange,
}

/// Which port a request comes to, before anything is claimed.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// This port; `0` for one the operating system picks.
    Exact(u16),
    /// Any free port of the range.
    AnyInRange,
}

impl<'a> ServicePorts<'a> {
    /// The ports `range` of service `service`, bound on `listen`.
    pub(super) fn new(service: &'a str, listen: IpAddr, range: PortRange) -> Self {
        Self {
            service,
            listen,
            range,
        }
    }

    /// Claims a port for `tunnel` as `requested` asks, and binds it. The error is a reason fit
    /// to send to the tunnel.
    pub(super) fn claim_and_bind<S: PublicSocket>(
        &self,
        registry: &Registry,
        tunnel: Uuid,
        requested: Option<u16>,
    ) -> Result<S, String> {
        match self.wanted(requested)? {
            Wanted::Exact(port) => claim_and_bind(registry, tunnel, self.listen, port)
                .map_err(|e| e.message::<S>(port)),
            Wanted::AnyInRange => scan_order(self.range, random_seed())
                .find_map(|port| claim_and_bind(registry, tunnel, self.listen, port).ok())
                .ok_or_else(|| {
                    format!(
                        "no free port left in service `{}`'s range {}-{}",
                        self.service, self.range.start, self.range.end
                    )
                }),
        }
    }

    /// The service's name.
    pub(super) fn service(&self) -> &str {
        self.service
    }

    /// The address its ports are bound on.
    pub(super) fn listen(&self) -> IpAddr {
        self.listen
    }

    /// A port this hub could give a tunnel that lets it choose, neither claimed nor bound:
    /// in a cluster it is claimed across the cluster first (`hub::cluster`), then here as
    /// though the tunnel had asked for it. A free port of the range (random, as
    /// [`ServicePorts::claim_and_bind`] scans), or with a range of `0` one the operating
    /// system picks now; `None` when the range has no free port here.
    pub(super) fn candidate(&self, registry: &Registry, transport: Transport) -> Option<u16> {
        if self.range.is_os_assigned() {
            let addr = SocketAddr::new(self.listen, 0);
            let bound = match transport {
                Transport::Tcp => std::net::TcpListener::bind(addr).and_then(|l| l.local_addr()),
                Transport::Udp => std::net::UdpSocket::bind(addr).and_then(|s| s.local_addr()),
            };
            return bound.ok().map(|addr| addr.port());
        }
        scan_order(self.range, random_seed()).find(|&port| {
            let key = (self.listen, port);
            registry.owner(transport, &key).is_none() && registry.held(transport, &key).is_none()
        })
    }

    /// Which port `requested` comes to, or why it is refused.
    fn wanted(&self, requested: Option<u16>) -> Result<Wanted, String> {
        let os_assigned = self.range.is_os_assigned();
        match requested {
            Some(port) if !os_assigned && !self.range.contains(port) => Err(format!(
                "port {port} is outside service `{}`'s range {}-{}",
                self.service, self.range.start, self.range.end
            )),
            Some(port) => Ok(Wanted::Exact(port)),
            None if os_assigned => Ok(Wanted::Exact(0)),
            None => Ok(Wanted::AnyInRange),
        }
    }
}

/// Every port of `range` once, from an offset `seed` picks, wrapping around.
fn scan_order(range: PortRange, seed: u32) -> impl Iterator<Item = u16> {
    let len = u32::from(range.end - range.start) + 1;
    let offset = seed % len;
    (0..len).map(move |i| range.start + ((offset + i) % len) as u16)
}

fn random_seed() -> u32 {
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    u32::from_le_bytes(seed)
}

/// Why a port could not be had.
#[derive(Debug)]
enum BindError {
    /// Another tunnel holds it (or it is held for another key's lost session).
    Taken,
    /// The operating system refused to bind it.
    Os(io::Error),
}

impl BindError {
    /// The reason sent to the tunnel, naming the port as sockets of kind `S` do.
    fn message<S: PublicSocket>(&self, port: u16) -> String {
        let what = S::PORT;
        match self {
            BindError::Taken => format!("{what} {port} is taken by another tunnel"),
            BindError::Os(e) if e.kind() == io::ErrorKind::AddrInUse => {
                format!("{what} {port} is in use by another program on the hub host")
            }
            BindError::Os(e) => format!("cannot {} {what} {port}: {e}", S::BINDING),
        }
    }
}

/// Claims `(ip, port)` for `tunnel` and binds it; a failed bind gives the claim back. Port 0
/// is bound first, then the port the operating system picked is claimed.
fn claim_and_bind<S: PublicSocket>(
    registry: &Registry,
    tunnel: Uuid,
    ip: IpAddr,
    port: u16,
) -> Result<S, BindError> {
    if port != 0 {
        registry
            .claim(S::TRANSPORT, (ip, port), tunnel)
            .map_err(|_| BindError::Taken)?;
    }
    let bound = S::bind(SocketAddr::new(ip, port));
    match (&bound, port) {
        (Err(_), p) if p != 0 => registry.release(S::TRANSPORT, &(ip, p), tunnel),
        (Ok(socket), 0) => {
            // The OS picked a port nobody can have claimed (it was not bound a moment ago).
            if let Ok(addr) = socket.local_addr() {
                let _ = registry.claim(S::TRANSPORT, (ip, addr.port()), tunnel);
            }
        }
        _ => {}
    }
    bound.map_err(BindError::Os)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn ports(start: u16, end: u16) -> ServicePorts<'static> {
        ServicePorts::new("game", LOOPBACK, PortRange { start, end })
    }

    #[test]
    fn a_port_outside_the_range_is_refused_and_named() {
        assert_eq!(
            ports(20000, 20010).wanted(Some(19999)),
            Err("port 19999 is outside service `game`'s range 20000-20010".into())
        );
        assert_eq!(
            ports(20000, 20010).wanted(Some(20010)),
            Ok(Wanted::Exact(20010))
        );
    }

    #[test]
    fn an_os_assigned_service_takes_any_requested_port_and_otherwise_port_zero() {
        assert_eq!(ports(0, 0).wanted(Some(4242)), Ok(Wanted::Exact(4242)));
        assert_eq!(ports(0, 0).wanted(None), Ok(Wanted::Exact(0)));
        assert_eq!(ports(5, 9).wanted(None), Ok(Wanted::AnyInRange));
    }

    #[test]
    fn the_scan_visits_every_port_of_the_range_once_from_the_seeded_offset() {
        let range = PortRange {
            start: 100,
            end: 104,
        };
        let order: Vec<u16> = scan_order(range, 7).collect();
        assert_eq!(order, [102, 103, 104, 100, 101]);
        let single = PortRange::single(65535);
        assert_eq!(scan_order(single, u32::MAX).collect::<Vec<_>>(), [65535]);
        let all = PortRange {
            start: 1,
            end: 65535,
        };
        assert_eq!(scan_order(all, 12345).count(), 65535);
    }

    #[test]
    fn messages_name_the_port_as_each_kind_of_socket_does() {
        let in_use = || BindError::Os(io::ErrorKind::AddrInUse.into());
        let denied = || BindError::Os(io::ErrorKind::PermissionDenied.into());
        assert_eq!(
            BindError::Taken.message::<TcpListener>(22),
            "port 22 is taken by another tunnel"
        );
        assert_eq!(
            BindError::Taken.message::<UdpSocket>(53),
            "udp port 53 is taken by another tunnel"
        );
        assert_eq!(
            in_use().message::<UdpSocket>(53),
            "udp port 53 is in use by another program on the hub host"
        );
        assert!(
            denied()
                .message::<TcpListener>(22)
                .starts_with("cannot listen on port 22: ")
        );
        assert!(
            denied()
                .message::<UdpSocket>(53)
                .starts_with("cannot bind udp port 53: ")
        );
    }

    /// A socket kind whose bind always fails, to see what happens to the claim.
    struct Unbindable;

    impl PublicSocket for Unbindable {
        const TRANSPORT: Transport = Transport::Tcp;
        const PORT: &'static str = "port";
        const BINDING: &'static str = "listen on";

        fn bind(_: SocketAddr) -> io::Result<Self> {
            Err(io::ErrorKind::AddrInUse.into())
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            unreachable!("never bound")
        }
    }

    #[tokio::test]
    async fn a_bound_port_is_claimed_and_a_failed_bind_gives_the_claim_back() {
        let registry = Registry::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let any = ports(0, 0);

        let listener: TcpListener = any.claim_and_bind(&registry, alice, None).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            registry.owner(Transport::Tcp, &(LOOPBACK, port)),
            Some(alice)
        );
        // The same number over UDP is another port.
        assert_eq!(registry.owner(Transport::Udp, &(LOOPBACK, port)), None);
        let taken = any.claim_and_bind::<TcpListener>(&registry, bob, Some(port));
        assert_eq!(
            taken.err(),
            Some(format!("port {port} is taken by another tunnel"))
        );

        let refused = any.claim_and_bind::<Unbindable>(&registry, bob, Some(40001));
        assert_eq!(
            refused.err(),
            Some("port 40001 is in use by another program on the hub host".into())
        );
        assert_eq!(registry.owner(Transport::Tcp, &(LOOPBACK, 40001)), None);
    }

    #[tokio::test]
    async fn a_range_with_no_bindable_port_says_so() {
        let registry = Registry::default();
        let refused =
            ports(40000, 40002).claim_and_bind::<Unbindable>(&registry, Uuid::new_v4(), None);
        assert_eq!(
            refused.err(),
            Some("no free port left in service `game`'s range 40000-40002".into())
        );
        for port in 40000..=40002 {
            assert_eq!(registry.owner(Transport::Tcp, &(LOOPBACK, port)), None);
        }
    }
}
