//! `GET /v1/openapi.json`: an OpenAPI 3.1 document of the API a daemon serves. Its schemas
//! describe the [`model`](super::model) documents; the test suite checks live answers
//! against them.

use serde_json::{Value, json};

fn string() -> Value {
    json!({ "type": "string" })
}

fn integer() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn number() -> Value {
    json!({ "type": "number" })
}

fn date_time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

/// A string that is one of `values`.
fn one_of(values: &[&str]) -> Value {
    json!({ "type": "string", "enum": values })
}

/// An object with `properties`, of which the `required` ones are always present.
fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

/// Every document the API answers with, by name.
fn schemas() -> Value {
    json!({
        "Message": object(&["message"], json!({ "message": string() })),
        "SystemInfo": system_info(),
        "ServiceInfo": service_info(),
        "ProxyInfo": object(
            &["name"],
            json!({ "name": string(), "port": integer(), "hostname": string() }),
        ),
        "TunnelInfo": tunnel_info(),
        "ClientInfo": client_info(),
        "LockoutInfo": lockout_info(),
        "ClusterInfo": cluster_info(),
        "MemberInfo": object(
            &["name", "advertise", "epoch", "lease_left_ms"],
            json!({
                "name": string(),
                "advertise": string(),
                "epoch": integer(),
                "lease_left_ms": integer()
            }),
        ),
        "TunnelProxyStatus": tunnel_proxy_status(),
        "TunnelStatus": tunnel_status(),
    })
}

/// `GET /v1/system` (both daemons).
fn system_info() -> Value {
    object(
        &[
            "role",
            "version",
            "uptime_secs",
            "pid",
            "process_cpu_percent",
            "process_memory_bytes",
            "cpu_percent",
            "cpus",
            "memory_total_bytes",
            "memory_used_bytes",
            "load_average",
        ],
        json!({
            "role": one_of(&["hub", "tunnel"]),
            "version": string(),
            "uptime_secs": integer(),
            "pid": integer(),
            "process_cpu_percent": number(),
            "process_memory_bytes": integer(),
            "cpu_percent": number(),
            "cpus": integer(),
            "memory_total_bytes": integer(),
            "memory_used_bytes": integer(),
            "load_average": { "type": "array", "items": number(), "minItems": 3, "maxItems": 3 }
        }),
    )
}

/// A hub service with its figures.
fn service_info() -> Value {
    object(
        &[
            "name",
            "kind",
            "listen",
            "tunnels",
            "clients",
            "bytes_in",
            "bytes_out",
        ],
        json!({
            "name": string(),
            "kind": one_of(&["tcp", "udp", "http", "https"]),
            "listen": string(),
            "domain": string(),
            "tunnels": integer(),
            "clients": integer(),
            "bytes_in": integer(),
            "bytes_out": integer()
        }),
    )
}

/// A tunnel connected to the hub, with its proxies.
fn tunnel_info() -> Value {
    object(
        &["id", "name", "peer", "since", "proxies"],
        json!({
            "id": string(),
            "name": string(),
            "key_name": string(),
            "peer": string(),
            "since": date_time(),
            "proxies": list_of("ProxyInfo")
        }),
    )
}

/// A client connection the hub serves.
fn client_info() -> Value {
    object(
        &[
            "id",
            "tunnel_id",
            "proxy",
            "peer",
            "bytes_in",
            "bytes_out",
            "since",
        ],
        json!({
            "id": string(),
            "tunnel_id": string(),
            "proxy": string(),
            "peer": string(),
            "bytes_in": integer(),
            "bytes_out": integer(),
            "since": date_time()
        }),
    )
}

/// An entry of the hub's failed-login table.
fn lockout_info() -> Value {
    object(
        &["address", "failures", "locked_until"],
        json!({
            "address": string(),
            "failures": integer(),
            "locked_until": { "type": ["string", "null"], "format": "date-time" }
        }),
    )
}

/// `GET /v1/cluster`.
fn cluster_info() -> Value {
    object(
        &["name", "redis", "member", "reachable", "members"],
        json!({
            "name": string(),
            "redis": string(),
            "member": { "type": "boolean" },
            "reachable": { "type": "boolean" },
            "members": list_of("MemberInfo"),
            "members_error": { "type": ["string", "null"] }
        }),
    )
}

/// A proxy as the tunnel daemon sees it.
fn tunnel_proxy_status() -> Value {
    object(
        &["name", "service", "target", "state", "target_up"],
        json!({
            "name": string(),
            "service": string(),
            "target": string(),
            "state": one_of(&["live", "rejected", "pending"]),
            "public": string(),
            "reason": string(),
            "target_up": { "type": ["boolean", "null"] }
        }),
    )
}

/// `GET /v1/status` of the tunnel daemon.
fn tunnel_status() -> Value {
    object(
        &["state", "hub", "since", "proxies"],
        json!({
            "state": one_of(&["connected", "connecting", "locked_out"]),
            "hub": string(),
            "tunnel_id": string(),
            "since": date_time(),
            "last_error": string(),
            "retry_at": date_time(),
            "proxies": list_of("TunnelProxyStatus")
        }),
    )
}

fn json_answer(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn list_of(name: &str) -> Value {
    json!({ "type": "array", "items": reference(name) })
}

fn get(summary: &str, ok: Value) -> Value {
    json!({ "get": {
        "summary": summary,
        "responses": {
            "200": ok,
            "401": json_answer("missing or wrong key (TLS listener)", reference("Message"))
        }
    }})
}

fn get_named(summary: &str, ok: Value, param: &str) -> Value {
    let mut op = get(summary, ok);
    op["get"]["parameters"] =
        json!([{ "name": param, "in": "path", "required": true, "schema": string() }]);
    op["get"]["responses"]["404"] = json_answer("no such thing", reference("Message"));
    op
}

fn delete(summary: &str) -> Value {
    json!({ "delete": {
        "summary": summary,
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": string() }],
        "responses": {
            "200": json_answer("done", reference("Message")),
            "404": json_answer("no such id", reference("Message")),
            "401": json_answer("missing or wrong key (TLS listener)", reference("Message"))
        }
    }})
}

fn text(description: &str) -> Value {
    json!({ "description": description, "content": { "text/plain": { "schema": string() } } })
}

/// The document for a daemon of `role` (`hub` or `tunnel`).
pub fn document(role: &str) -> Value {
    let mut paths = common_paths();
    if role == "hub" {
        add_hub_paths(&mut paths);
    } else {
        paths["/v1/status"] = get(
            "the tunnel daemon's own view",
            json_answer("status", reference("TunnelStatus")),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("tunnelize {role} admin API"),
            "version": env!("CARGO_PKG_VERSION")
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "monitoringKey": { "type": "http", "scheme": "bearer" } }
        },
        "paths": paths
    })
}

/// The endpoints both daemons serve.
fn common_paths() -> Value {
    json!({
        "/healthz": get("liveness", text("`ok`")),
        "/metrics": get("Prometheus text exposition", text("metrics")),
        "/v1/openapi.json": get("this document", json_answer("OpenAPI 3.1", json!({ "type": "object" }))),
        "/v1/system": get("host and process figures", json_answer("figures", reference("SystemInfo"))),
        "/v1/reload": { "post": {
            "summary": "re-read the configuration file",
            "responses": {
                "200": json_answer("reloaded: a summary", reference("Message")),
                "422": json_answer("the new configuration was refused; the old one runs on", reference("Message")),
                "501": json_answer("this daemon cannot reload", reference("Message"))
            }
        }}
    })
}

/// The hub's own endpoints: services, tunnels, clients and lockouts.
fn add_hub_paths(paths: &mut Value) {
    paths["/v1/services"] = get(
        "every service (a tunnel key may also call this)",
        json_answer("services", list_of("ServiceInfo")),
    );
    paths["/v1/services/{name}"] = get_named(
        "one service with its figures",
        json_answer("the service", reference("ServiceInfo")),
        "name",
    );
    paths["/v1/services/{name}/tunnels"] = get_named(
        "the tunnels with a proxy on the service",
        json_answer("tunnels", list_of("TunnelInfo")),
        "name",
    );
    paths["/v1/services/{name}/clients"] = get_named(
        "the clients connected to the service",
        json_answer("clients", list_of("ClientInfo")),
        "name",
    );
    paths["/v1/tunnels/{id}"] =
        delete("disconnect a tunnel: its clients close, its ports and hostnames are freed");
    paths["/v1/clients/{id}"] = delete("disconnect one client");
    paths["/v1/lockouts"] = get(
        "the failed-login table: addresses with failures, and lockouts",
        json_answer("entries", list_of("LockoutInfo")),
    );
    paths["/v1/lockouts/{address}"] = delete("forget an address's failures and lockout");
    paths["/v1/cluster"] = get(
        "this hub's standing in its cluster, and the cluster's hubs (404 for a hub alone)",
        json_answer("the cluster", reference("ClusterInfo")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        for role in ["hub", "tunnel"] {
            let doc = document(role);
            let text = doc.to_string();
            for part in text.split("\"#/components/schemas/").skip(1) {
                let name = &part[..part.find('"').unwrap()];
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{role}: unresolved reference {name}"
                );
            }
        }
    }

    #[test]
    fn each_role_lists_only_its_own_endpoints() {
        assert!(document("hub")["paths"].get("/v1/services").is_some());
        assert!(document("hub")["paths"].get("/v1/status").is_none());
        assert!(document("tunnel")["paths"].get("/v1/status").is_some());
        assert!(document("tunnel")["paths"].get("/v1/services").is_none());
    }
}
