//! A tunnel's proxy joining an http/https service: the public hostname it gets (its own
//! choice under the service's domain, a name its key may claim, or a random one) and the claim
//! of that hostname in the routes. It checks and claims; it serves no request.

use std::sync::Arc;

use super::routes::BackendSpec;
use crate::config::HttpService;
use crate::hub::Shared;
use crate::hub::registry::TunnelSession;
use crate::protocol::ProxyRequest;

/// Registers a tunnel's proxy on an http/https service: picks its hostname and claims it.
/// Returns the public hostname, or a reason fit to send to the tunnel.
pub(crate) fn expose(
    shared: &Arc<Shared>,
    session: &Arc<TunnelSession>,
    service: &str,
    config: &HttpService,
    req: &ProxyRequest,
) -> Result<String, String> {
    let host = match req.hostname.as_deref().map(str::to_ascii_lowercase) {
        None => random_hostname(shared, service, config),
        Some(name) if !name.contains('.') => format!("{name}.{}", config.domain),
        Some(name) if name.ends_with(&format!(".{}", config.domain)) => name,
        Some(name) => outside_domain(shared, session, service, config, name)?,
    };
    if !crate::config::is_hostname(&host) {
        return Err(format!("{host:?} is not a valid hostname"));
    }
    let spec = BackendSpec {
        session: session.clone(),
        proxy: req.name.clone(),
        auth: req.basic_auth.clone(),
        max_body: req.max_body,
    };
    shared
        .hosts
        .claim(service, &host, req.group.as_deref(), spec)
        .map(|_| host)
}

/// A random hostname under the service's domain that nobody has (or holds).
pub(crate) fn random_hostname(shared: &Shared, service: &str, config: &HttpService) -> String {
    loop {
        let mut bytes = [0u8; 5];
        let _ = getrandom::fill(&mut bytes);
        let candidate = format!("{}.{}", hex::encode(bytes), config.domain);
        if !shared.hosts.is_taken(service, &candidate) {
            return candidate;
        }
    }
}

/// `name`, outside the service's domain, if the tunnel's key may claim it.
pub(crate) fn outside_domain(
    shared: &Shared,
    session: &TunnelSession,
    service: &str,
    config: &HttpService,
    name: String,
) -> Result<String, String> {
    let current = shared.current();
    let allowed = session.key_name.as_ref().is_some_and(|key_name| {
        current
            .keys
            .iter()
            .any(|k| &k.name == key_name && k.allows_hostname(&name))
    });
    if !allowed {
        return Err(format!(
            "hostname {name} is not under service `{service}`'s domain {} and this \
             tunnel's key may not claim it (see `hostnames` in the hub's [[keys]])",
            config.domain
        ));
    }
    Ok(name)
}
