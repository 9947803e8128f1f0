//! The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`.

use serde_json::{Value, json};

fn error_responses() -> Value {
    let err = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "400": {"description": "bad body, query or path; `field` names the offending part", "content": err["content"]},
        "409": {"description": "refused by the state machine; nothing changed", "content": err["content"]},
        "503": {"description": "no leader known; retry (with the same Idempotency-Key, a write takes effect once)", "content": err["content"]},
        "504": {"description": "timed out", "content": err["content"]}
    })
}

fn op(summary: &str, body: Option<&str>, ok: &str) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": error_responses(),
    });
    o["responses"]["200"] = json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{ok}")}}}});
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
    }
    // Every write: a client's retries with the same key take effect once.
    o["parameters"] = json!([{"name": "Idempotency-Key", "in": "header", "required": false,
        "description": "1 to 100 visible ASCII characters, unique per call: a retry of the call with the same key (at any member, within 10 minutes) gets the first attempt's answer and does not apply the write again",
        "schema": {"type": "string", "maxLength": 100}}]);
    o
}

fn read(summary: &str, ok: &str) -> Value {
    let mut o = op(summary, None, ok);
    o["parameters"] = json!([{"name": "consistency", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["linearizable", "local"], "default": "linearizable"}}]);
    o
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Palisade control plane", "version": env!("CARGO_PKG_VERSION"),
            "description": "Writes go through Raft and may be sent to any member (followers forward to the leader). Reads are linearizable unless `consistency=local`."},
        "paths": {
            "/v1/identities": {
                "post": op("allocate the identity of a label set (same labels, same id)", Some("AllocateIdentity"), "Identity"),
                "get": read("list identities", "IdentityList"),
            },
            "/v1/identities/gc": {
                "post": op("remove identities no endpoint has used for grace_seconds (replicated clock)", Some("Gc"), "GcResult"),
            },
            "/v1/identities/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "uint32"}}],
                "get": read("get an identity", "Identity"),
                "delete": op("release an identity", None, "Removed"),
            },
            "/v1/policies": {"get": read("list policies with the current revision", "PolicyList")},
            "/v1/policies/wait": {"get": {
                "summary": "wait until every registered node acknowledged a revision (504 lists the laggards)",
                "parameters": [
                    {"name": "revision", "in": "query", "required": false, "schema": {"type": "integer"}},
                    {"name": "timeout_ms", "in": "query", "required": false, "schema": {"type": "integer", "default": 30000}}
                ],
                "responses": {"200": {"description": "every node acknowledged"}, "504": {"description": "timed out; `laggards` lists nodes and their acknowledged revision"}}
            }},
            "/v1/policies/{kind}/{namespace}/{name}": {
                "parameters": [
                    {"name": "kind", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}
                ],
                "put": op("apply a policy object (validated before commit; 422 when invalid)", Some("PolicyObject"), "PolicyWrite"),
                "get": read("get a policy object", "Policy"),
                "delete": op("delete a policy object", None, "PolicyWrite"),
            },
            "/v1/nodes": {
                "post": op("register or update a node; allocates its pod CIDR", Some("NodeRegistration"), "Node"),
                "get": read("list nodes", "NodeList"),
            },
            "/v1/nodes/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": read("get a node", "Node"),
                "delete": op("remove a node, its pod CIDR and endpoints", None, "Removed"),
            },
            "/v1/nodes/{name}/heartbeat": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": op("renew a node's lease", None, "Heartbeat"),
            },
            "/v1/nodes/{name}/ack": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "post": op("record the policy revision a node enforces", Some("Ack"), "Ack"),
            },
            "/v1/endpoints": {"get": read("list endpoints", "EndpointList")},
            "/v1/endpoints/{ip}": {
                "parameters": [{"name": "ip", "in": "path", "required": true, "schema": {"type": "string"}}],
                "put": op("bind an endpoint IP to an identity on a node", Some("EndpointBody"), "Endpoint"),
                "get": read("get an endpoint", "Endpoint"),
                "delete": op("remove an endpoint", None, "Removed"),
            },
            "/v1/watch/revision": {"get": read("the current change revision", "WatchRevision")},
            "/v1/watch": {"get": {
                "summary": "long-poll the change feed after a change revision (410: re-list)",
                "parameters": [
                    {"name": "from", "in": "query", "required": true, "schema": {"type": "integer"}},
                    {"name": "timeout_ms", "in": "query", "required": false, "schema": {"type": "integer", "default": 30000}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "default": 1000}}
                ],
                "responses": {"200": {"description": "changes", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Changes"}}}},
                    "410": {"description": "the feed no longer reaches back to `from`"}}
            }},
            "/v1/cluster/status": {"get": op("this member's view of the cluster", None, "ClusterStatus")},
            "/v1/cluster/snapshot": {"post": {"summary": "build a snapshot on this member now", "responses": {"200": {"description": "triggered"}}}},
            "/v1/cluster/members": {"post": op("add a learner, change the voters or remove learners", Some("MembershipChange"), "ClusterStatus")},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
        },
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "admin tokens may call everything under /v1, read tokens GET only; off when the member has no admin token file"}}
        }
    })
}

fn schemas() -> Value {
    let any = json!({"type": "object"});
    json!({
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
            "AllocateIdentity": {"type": "object", "required": ["labels"], "additionalProperties": false,
                "properties": {"labels": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"type": "string"}}}},
            "Identity": {"type": "object", "properties": {"id": {"type": "integer"}, "labels": {"type": "array", "items": {"type": "string"}}, "created": {"type": "boolean"}}},
            "IdentityList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Identity"}}}},
            "Gc": {"type": "object", "required": ["grace_seconds"], "properties": {"grace_seconds": {"type": "integer"}}},
            "GcResult": {"type": "object", "properties": {"collected": {"type": "integer"}}},
            "Removed": {"type": "object", "properties": {"existed": {"type": "boolean"}}},
            "PolicyObject": any,
            "PolicyWrite": {"type": "object", "properties": {"revision": {"type": "integer"}, "changed": {"type": "boolean"}}},
            "Policy": {"type": "object", "properties": {"key": {"type": "object"}, "object": {"type": "object"}, "revision": {"type": "integer"}}},
            "PolicyList": {"type": "object", "properties": {"revision": {"type": "integer"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Policy"}}}},
            "NodeRegistration": {"type": "object", "required": ["name", "address", "wireguard_public_key", "wireguard_epoch"],
                "properties": {"name": {"type": "string"}, "address": {"type": "string"}, "wireguard_public_key": {"type": "string"}, "wireguard_epoch": {"type": "integer"}}},
            "Node": {"type": "object", "properties": {"name": {"type": "string"}, "address": {"type": "string"}, "pod_cidr": {"type": "string"},
                "wireguard_public_key": {"type": "string"}, "wireguard_epoch": {"type": "integer"}, "acked_revision": {"type": "integer"},
                "last_heartbeat_ms": {"type": "integer"}, "live": {"type": "boolean"}}},
            "NodeList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
            "WatchRevision": {"type": "object", "properties": {"revision": {"type": "integer"}}},
            "Changes": {"type": "object", "properties": {"revision": {"type": "integer"}, "changes": {"type": "array", "items": {"type": "object",
                "properties": {"revision": {"type": "integer"}, "kind": {"type": "string", "enum": ["identity", "node", "endpoint", "policy"]},
                    "key": {"type": "string"}, "value": {"type": ["object", "null"]}}}}}},
            "Heartbeat": {"type": "object", "properties": {"at_ms": {"type": "integer"}, "lease_ms": {"type": "integer"}}},
            "Ack": {"type": "object", "required": ["revision"], "properties": {"revision": {"type": "integer"}}},
            "EndpointBody": {"type": "object", "required": ["identity", "node"], "properties": {"identity": {"type": "integer"}, "node": {"type": "string"}}},
            "Endpoint": {"type": "object", "properties": {"ip": {"type": "string"}, "identity": {"type": "integer"}, "node": {"type": "string"}}},
            "EndpointList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Endpoint"}}}},
            "MembershipChange": {"type": "object", "required": ["action"], "properties": {
                "action": {"type": "string", "enum": ["add_learner", "change_membership", "remove_learners"]},
                "id": {"type": "integer"}, "raft_addr": {"type": "string"}, "api_addr": {"type": "string"},
                "voters": {"type": "array", "items": {"type": "integer"}}, "retain": {"type": "boolean"},
                "ids": {"type": "array", "items": {"type": "integer"}}}},
            "ClusterStatus": {"type": "object", "properties": {
                "id": {"type": "integer"}, "state": {"type": "string"}, "leader": {"type": ["integer", "null"]},
                "leader_api_addr": {"type": ["string", "null"]}, "term": {"type": "integer"},
                "last_log_index": {"type": ["integer", "null"]}, "commit_index": {"type": ["integer", "null"]},
                "last_applied": {"type": ["integer", "null"]}, "snapshot_index": {"type": ["integer", "null"]},
                "purged_index": {"type": ["integer", "null"]},
                "voters": {"type": "array", "items": {"$ref": "#/components/schemas/MemberStatus"}},
                "learners": {"type": "array", "items": {"$ref": "#/components/schemas/MemberStatus"}}}},
            "MemberStatus": {"type": "object", "properties": {"id": {"type": "integer"}, "raft_addr": {"type": "string"},
                "api_addr": {"type": "string"}, "matched_index": {"type": ["integer", "null"]}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "missing schema {name}"
            );
        }
    }
}
