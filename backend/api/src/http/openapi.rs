//! The OpenAPI 3.1 document of the REST API, served at `/api/v1/openapi.json`. It is generated
//! from [`super::endpoints`], the list the router itself is built from, and from the JSON Schemas
//! of the wire types (schemars, JSON Schema 2020-12 as OpenAPI 3.1 takes it): an endpoint cannot
//! be routed without being described, and a test fails if one is described without its answer.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::{Access, Endpoint};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A schema by reference (registered among the components).
fn referenced<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A schema written out, for query parameters (each property is one parameter).
fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// What one endpoint takes and answers, as the document says.
#[derive(Clone, Copy, Default)]
pub struct Doc {
    pub(super) request: Option<Body>,
    pub(super) query: Option<SchemaFn>,
    pub(super) answer: Option<Answer>,
    /// A second success answer (a callback that redirects browsers and answers others JSON).
    pub(super) also: Option<(u16, SchemaFn)>,
    /// A second success answer without a body (a wait that ended with nothing new).
    pub(super) also_empty: Option<u16>,
}

/// A request body.
#[derive(Clone, Copy)]
pub(super) enum Body {
    Json(SchemaFn),
    Bytes(&'static str),
}

/// The answer when the call succeeds (failures are the `default`: an [`berth_wire::ErrorBody`]).
#[derive(Clone, Copy)]
pub(super) enum Answer {
    Json(u16, SchemaFn),
    Empty(u16),
    /// A body of this media type (a stream, a tar archive, Prometheus text).
    Bytes(u16, &'static str),
    /// Newline-delimited JSON of these records (or `204` with nothing new, when it says so).
    Lines(SchemaFn),
    /// Server-sent events that stay open.
    Events,
    Redirect,
    /// A protocol upgrade (the agents' WebSocket).
    Upgrade,
}

impl Endpoint {
    /// The JSON request body.
    pub(super) fn takes<T: JsonSchema>(mut self) -> Endpoint {
        self.doc.request = Some(Body::Json(referenced::<T>));
        self
    }

    /// A raw request body of this media type.
    pub(super) fn takes_bytes(mut self, media_type: &'static str) -> Endpoint {
        self.doc.request = Some(Body::Bytes(media_type));
        self
    }

    /// Query parameters: the properties of `T`.
    pub(super) fn query<T: JsonSchema>(mut self) -> Endpoint {
        self.doc.query = Some(inline::<T>);
        self
    }

    /// A JSON answer with this status.
    pub(super) fn answers<T: JsonSchema>(mut self, status: u16) -> Endpoint {
        self.doc.answer = Some(Answer::Json(status, referenced::<T>));
        self
    }

    pub(super) fn answers_empty(mut self, status: u16) -> Endpoint {
        self.doc.answer = Some(Answer::Empty(status));
        self
    }

    pub(super) fn answers_bytes(mut self, status: u16, media_type: &'static str) -> Endpoint {
        self.doc.answer = Some(Answer::Bytes(status, media_type));
        self
    }

    pub(super) fn answers_lines<T: JsonSchema>(mut self) -> Endpoint {
        self.doc.answer = Some(Answer::Lines(referenced::<T>));
        self
    }

    pub(super) fn answers_events(mut self) -> Endpoint {
        self.doc.answer = Some(Answer::Events);
        self
    }

    /// Besides its answer, this JSON one (for another kind of client).
    pub(super) fn or_answers<T: JsonSchema>(mut self, status: u16) -> Endpoint {
        self.doc.also = Some((status, referenced::<T>));
        self
    }

    /// Besides its answer, this one without a body.
    pub(super) fn or_answers_empty(mut self, status: u16) -> Endpoint {
        self.doc.also_empty = Some(status);
        self
    }

    pub(super) fn redirects(mut self) -> Endpoint {
        self.doc.answer = Some(Answer::Redirect);
        self
    }

    pub(super) fn upgrades(mut self) -> Endpoint {
        self.doc.answer = Some(Answer::Upgrade);
        self
    }
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| build(&super::endpoints()))
}

fn build(endpoints: &[Endpoint]) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut generator = SchemaGenerator::new(settings);
    let error = referenced::<berth_wire::ErrorBody>(&mut generator);
    let mut paths = Map::new();
    for endpoint in endpoints {
        let doc = endpoint.doc;
        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(operation_id(endpoint)));
        let tag = endpoint.path.split('/').nth(3).unwrap_or("api");
        operation.insert("tags".into(), json!([tag]));
        let mut parameters: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_parameter(endpoint.path, name) }))
            .collect();
        if let Some(query) = doc.query {
            let schema = query(&mut generator);
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    parameters.push(json!({
                        "name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": property,
                    }));
                }
            }
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        match doc.request {
            Some(Body::Json(schema)) => {
                let schema = schema(&mut generator);
                operation.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
                );
            }
            Some(Body::Bytes(media_type)) => {
                operation.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": { media_type: { "schema": { "type": "string", "contentMediaType": media_type } } } }),
                );
            }
            None => {}
        }
        let mut responses = Map::new();
        let answer =
            doc.answer.unwrap_or_else(|| panic!("BUG: {} {} has no documented answer", endpoint.method, endpoint.path));
        let text = |media_type: &str| json!({ media_type: { "schema": { "type": "string" } } });
        let (status, response) = match answer {
            Answer::Json(status, schema) => {
                let schema = schema(&mut generator);
                (status, json!({ "description": "done", "content": { "application/json": { "schema": schema } } }))
            }
            Answer::Empty(status) => (status, json!({ "description": "done" })),
            Answer::Bytes(status, media_type) => {
                (status, json!({ "description": "the body", "content": text(media_type) }))
            }
            Answer::Lines(schema) => {
                let schema = schema(&mut generator);
                responses.insert("204".into(), json!({ "description": "nothing (more) to send" }));
                let content = json!({
                    "application/x-ndjson": { "schema": { "type": "string" }, "x-line-schema": schema },
                    "text/event-stream": { "schema": { "type": "string" } },
                });
                (
                    200,
                    json!({ "description": "one JSON record per line; server-sent events when asked for", "content": content }),
                )
            }
            Answer::Events => {
                (200, json!({ "description": "server-sent events", "content": text("text/event-stream") }))
            }
            Answer::Redirect => (303, json!({ "description": "on to where the browser goes next" })),
            Answer::Upgrade => (101, json!({ "description": "switching to the WebSocket protocol" })),
        };
        responses.insert(status.to_string(), response);
        if let Some((status, schema)) = doc.also {
            let schema = schema(&mut generator);
            responses.insert(
                status.to_string(),
                json!({ "description": "done", "content": { "application/json": { "schema": schema } } }),
            );
        }
        if let Some(status) = doc.also_empty {
            responses.insert(status.to_string(), json!({ "description": "nothing new" }));
        }
        // The errors Berth answers (a 5xx is never documented: it is a bug, or a provider down).
        for (status, what) in ERRORS {
            responses.insert(
                status.to_string(),
                json!({ "description": what, "content": { "application/json": { "schema": error } } }),
            );
        }
        if endpoint.path.contains("/auth/") {
            responses.insert(
                "502".into(),
                json!({ "description": "the sign-in provider failed", "content": { "application/json": { "schema": error } } }),
            );
        }
        operation.insert("responses".into(), Value::Object(responses));
        if endpoint.access == Access::Public {
            operation.insert("security".into(), json!([]));
        }
        let item = paths.entry(endpoint.path.to_string()).or_insert_with(|| json!({}));
        item[endpoint.method.as_str().to_ascii_lowercase()] = Value::Object(operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Berth",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST API of a Berth control plane. Every call but the public ones carries `Authorization: Bearer <token>`; errors are `ErrorBody`.",
        },
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
        "security": [{ "bearer": [] }],
    })
}

/// The failures every operation may answer, each with an `ErrorBody`.
const ERRORS: [(u16, &str); 9] = [
    (400, "a request axum could not read (a path segment or query of the wrong type)"),
    (401, "no valid credentials"),
    (403, "the credentials do not allow it"),
    (404, "no such thing, or one the caller may not know of"),
    (405, "the path does not take this method"),
    (409, "it conflicts with the current state"),
    (413, "the body is too large"),
    (422, "the input is not valid (`field` names it)"),
    (429, "too many attempts; wait"),
];

/// The type a path parameter is parsed as.
fn path_parameter(path: &str, name: &str) -> Value {
    match name {
        // A build is also `latest`.
        "number" if path.contains("/builds/") => {
            json!({ "oneOf": [{ "type": "integer", "minimum": 0, "maximum": u32::MAX }, { "const": "latest" }] })
        }
        "number" => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
        "id" if path.starts_with("/api/v1/tokens/") => {
            json!({ "type": "integer", "format": "int64" })
        }
        _ => json!({ "type": "string" }),
    }
}

/// `post_teams_team_apps_app_deploy`: the method and the path's words.
fn operation_id(endpoint: &Endpoint) -> String {
    let words = endpoint
        .path
        .trim_start_matches("/api/v1")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    format!("{}_{words}", endpoint.method.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_in_the_document_with_its_answer_and_every_reference_resolves() {
        let endpoints = super::super::endpoints();
        let document = build(&endpoints);
        let paths = document["paths"].as_object().expect("paths");
        for endpoint in &endpoints {
            let operation = &paths[endpoint.path][endpoint.method.as_str().to_ascii_lowercase()];
            assert!(operation["responses"]["404"].is_object(), "{} {}", endpoint.method, endpoint.path);
            assert!(operation["responses"].get("default").is_none() && operation["responses"].get("500").is_none());
        }
        let operations: usize = paths.values().map(|item| item.as_object().map_or(0, Map::len)).sum();
        assert_eq!(operations, endpoints.len());
        // Every $ref names a component that is there.
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "{name} is referenced but not defined");
        }
        assert!(schemas.contains_key("CreateApp") && schemas.contains_key("ErrorBody"));
        let create = &paths["/api/v1/teams/{team}/apps"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateApp"
        );
        assert!(create["responses"]["201"].is_object());
        let public = &paths["/api/v1/login"]["post"];
        assert_eq!(public["security"], json!([]));
    }
}
