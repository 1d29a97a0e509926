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

fn schemas() -> Value {
    json!({
        "Message": {
            "type": "object",
            "required": ["message"],
            "properties": { "message": string() }
        },
        "SystemInfo": {
            "type": "object",
            "required": ["role", "version", "uptime_secs", "pid", "process_cpu_percent",
                "process_memory_bytes", "cpu_percent", "cpus", "memory_total_bytes",
                "memory_used_bytes", "load_average"],
            "properties": {
                "role": { "type": "string", "enum": ["hub", "tunnel"] },
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
            }
        },
        "ServiceInfo": {
            "type": "object",
            "required": ["name", "kind", "listen", "tunnels", "clients", "bytes_in", "bytes_out"],
            "properties": {
                "name": string(),
                "kind": { "type": "string", "enum": ["tcp", "udp", "http", "https"] },
                "listen": string(),
                "domain": string(),
                "tunnels": integer(),
                "clients": integer(),
                "bytes_in": integer(),
                "bytes_out": integer()
            }
        },
        "ProxyInfo": {
            "type": "object",
            "required": ["name"],
            "properties": { "name": string(), "port": integer(), "hostname": string() }
        },
        "TunnelInfo": {
            "type": "object",
            "required": ["id", "name", "peer", "since", "proxies"],
            "properties": {
                "id": string(),
                "name": string(),
                "key_name": string(),
                "peer": string(),
                "since": { "type": "string", "format": "date-time" },
                "proxies": { "type": "array", "items": { "$ref": "#/components/schemas/ProxyInfo" } }
            }
        },
        "ClientInfo": {
            "type": "object",
            "required": ["id", "tunnel_id", "proxy", "peer", "bytes_in", "bytes_out", "since"],
            "properties": {
                "id": string(),
                "tunnel_id": string(),
                "proxy": string(),
                "peer": string(),
                "bytes_in": integer(),
                "bytes_out": integer(),
                "since": { "type": "string", "format": "date-time" }
            }
        },
        "LockoutInfo": {
            "type": "object",
            "required": ["address", "failures", "locked_until"],
            "properties": {
                "address": string(),
                "failures": integer(),
                "locked_until": { "type": ["string", "null"], "format": "date-time" }
            }
        },
        "TunnelProxyStatus": {
            "type": "object",
            "required": ["name", "service", "target", "state", "target_up"],
            "properties": {
                "name": string(),
                "service": string(),
                "target": string(),
                "state": { "type": "string", "enum": ["live", "rejected", "pending"] },
                "public": string(),
                "reason": string(),
                "target_up": { "type": ["boolean", "null"] }
            }
        },
        "TunnelStatus": {
            "type": "object",
            "required": ["state", "hub", "since", "proxies"],
            "properties": {
                "state": { "type": "string", "enum": ["connected", "connecting"] },
                "hub": string(),
                "tunnel_id": string(),
                "since": { "type": "string", "format": "date-time" },
                "last_error": string(),
                "proxies": { "type": "array", "items": { "$ref": "#/components/schemas/TunnelProxyStatus" } }
            }
        }
    })
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
    let mut paths = json!({
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
    });
    if role == "hub" {
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
