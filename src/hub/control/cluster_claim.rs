//! A proxy's claim across the cluster, made before the hub claims it for itself
//! (`claims::expose`): the port or hostname is settled first, so every hub of the cluster
//! gives one number or name to one owner. A tunnel that lets the hub choose gets what its key
//! held here, or a candidate this hub has free that nobody holds in the cluster; the request
//! then goes on as though the tunnel had asked for exactly that.
//!
//! A claim the cluster grants but this hub then cannot bind (another program holds the port
//! here) is not renewed and expires after a lease plus `reconnect_grace`.

use crate::config::{ServiceConfig, ServiceKind};
use crate::hub::cluster::{ClaimKey, Cluster, Owner, Refused};
use crate::hub::ports::ServicePorts;
use crate::hub::registry::TunnelSession;
use crate::hub::{Shared, http};
use crate::protocol::{ProxyRequest, Transport};

/// How many candidates a tunnel that lets the hub choose is offered before it is refused.
const CANDIDATES: usize = 16;

/// Claims what `req` asks for on `service` across the cluster; returns the request with the
/// port or hostname it got, or the reason fit to send to the tunnel.
pub(super) async fn claim(
    shared: &Shared,
    cluster: &Cluster,
    session: &TunnelSession,
    service: &ServiceConfig,
    req: &ProxyRequest,
) -> Result<ProxyRequest, String> {
    let owner = Owner::of(
        session.key_name.as_deref(),
        req.group.as_deref(),
        session.id,
    );
    match &service.kind {
        ServiceKind::Tcp(tcp) => {
            let ports = ServicePorts::new(&service.name, tcp.listen, tcp.ports);
            port(
                shared,
                cluster,
                session,
                (ports, Transport::Tcp),
                req,
                &owner,
            )
            .await
        }
        ServiceKind::Udp(udp) => {
            let ports = ServicePorts::new(&service.name, udp.listen, udp.ports);
            port(
                shared,
                cluster,
                session,
                (ports, Transport::Udp),
                req,
                &owner,
            )
            .await
        }
        ServiceKind::Http(config) | ServiceKind::Https(config) => {
            let name = &service.name;
            let wanted = match (&req.hostname, session.key_name.as_deref()) {
                (Some(host), _) => Some(full_hostname(shared, session, name, config, host)?),
                (None, Some(key_name)) => shared.hosts.held_hostname_of(key_name, name, &req.name),
                (None, None) => None,
            };
            let candidates = wanted.clone().into_iter().chain(
                std::iter::repeat_with(|| http::random_hostname(shared, name, config))
                    .take(if wanted.is_some() { 0 } else { CANDIDATES }),
            );
            let key = |host: &String| ClaimKey::Host {
                service: name.clone(),
                host: host.clone(),
            };
            let host = first_granted(cluster, candidates, key, &owner, wanted.is_some()).await?;
            Ok(ProxyRequest {
                hostname: Some(host),
                ..req.clone()
            })
        }
    }
}

/// The port half of [`claim`]: the port asked for, or the one this key held here, or free
/// candidates of the service's range.
async fn port(
    shared: &Shared,
    cluster: &Cluster,
    session: &TunnelSession,
    (ports, transport): (ServicePorts<'_>, Transport),
    req: &ProxyRequest,
    owner: &Owner,
) -> Result<ProxyRequest, String> {
    let held = match (req.port, session.key_name.as_deref()) {
        (None, Some(key_name)) => shared
            .registry
            .held_port_of(key_name, ports.service(), &req.name, transport)
            .filter(|(ip, _)| *ip == ports.listen())
            .map(|(_, port)| port),
        _ => None,
    };
    let wanted = req.port.or(held);
    let candidates = wanted.into_iter().chain(
        std::iter::repeat_with(|| ports.candidate(&shared.registry, transport))
            .take(if wanted.is_some() { 0 } else { CANDIDATES })
            .flatten(),
    );
    let key = |port: &u16| ClaimKey::Port(transport, *port);
    let port = first_granted(cluster, candidates, key, owner, wanted.is_some()).await?;
    Ok(ProxyRequest {
        port: Some(port),
        ..req.clone()
    })
}

/// The first of `candidates` the cluster grants `owner`. A candidate another owner holds is
/// skipped, unless it was `asked` for (the tunnel's own choice, or its key's held one): then
/// the refusal is the answer. The cluster being unavailable is the answer at once.
async fn first_granted<T>(
    cluster: &Cluster,
    candidates: impl Iterator<Item = T>,
    key: impl Fn(&T) -> ClaimKey,
    owner: &Owner,
    asked: bool,
) -> Result<T, String> {
    let mut last = None;
    for candidate in candidates {
        match cluster.claim(&key(&candidate), owner).await {
            Ok(()) => return Ok(candidate),
            Err(Refused::Taken(reason)) if !asked => last = Some(reason),
            Err(refused) => return Err(refused.to_string()),
        }
    }
    Err(match last {
        Some(reason) => format!(
            "no free port or hostname found that the cluster's other hubs do not hold after \
             {CANDIDATES} tries (the last: {reason}); ask for one, or widen the range"
        ),
        None => "no free port left in the service's range on this hub".to_owned(),
    })
}

/// The full hostname a tunnel asks for, if its key may have it: a name under the service's
/// domain, or one outside it that the key's `hostnames` allow (checked before the cluster
/// claim, so a key cannot reserve names it may not serve).
fn full_hostname(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    config: &crate::config::HttpService,
    asked: &str,
) -> Result<String, String> {
    let name = asked.to_ascii_lowercase();
    if !name.contains('.') {
        return Ok(format!("{name}.{}", config.domain));
    }
    if name.ends_with(&format!(".{}", config.domain)) {
        return Ok(name);
    }
    http::outside_domain(shared, session, service, config, name)
}
