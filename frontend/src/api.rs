//! The dashboard talks to Berth only through its REST API, so every permission and validation
//! rule is the API's. In the browser that is `fetch` with the session cookie (and the CSRF token on
//! mutations); during server-side rendering it is a [`ServerTransport`] that `berth server`
//! provides as context, which runs the same request through the API router in-process with the
//! page request's cookie.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use berth_wire::ErrorBody;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A failed API call, as the pages show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    fn from_response(status: u16, body: &str) -> ApiError {
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(error) => ApiError { status, code: error.code, message: error.message, field: error.field },
            Err(_) => ApiError {
                status,
                code: "http".into(),
                message: format!("the server answered {status}: {}", body.chars().take(200).collect::<String>()),
                field: None,
            },
        }
    }

    fn network(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: 0,
            code: "network".into(),
            message: format!("could not reach Berth: {message}"),
            field: None,
        }
    }

    /// The message for a form field, if this error is about it.
    pub fn for_field(&self, field: &str) -> Option<String> {
        (self.field.as_deref() == Some(field)).then(|| self.message.clone())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One API request, as the server-side transport receives it.
pub struct ApiRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
}

/// The status and body of an API response.
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

type TransportFn = dyn Fn(ApiRequest) -> Pin<Box<dyn Future<Output = ApiResponse> + Send>> + Send + Sync;

/// How server-side rendering reaches the API: provided as context by `berth server` for each page
/// request, carrying that request's session.
#[derive(Clone)]
pub struct ServerTransport(pub Arc<TransportFn>);

/// The session's CSRF token, provided as context by `berth server` while rendering a page; the
/// shell writes it into `<meta name="csrf-token">`, where the browser's fetches read it.
#[derive(Clone, Debug)]
pub struct Csrf(pub String);

pub async fn get<T: DeserializeOwned>(path: impl Into<String>) -> Result<T, ApiError> {
    request("GET", path.into(), None).await
}

pub async fn post<B: Serialize, T: DeserializeOwned>(path: impl Into<String>, body: &B) -> Result<T, ApiError> {
    let body = serde_json::to_string(body).expect("BUG: request bodies always serialise");
    request("POST", path.into(), Some(body)).await
}

pub async fn put<B: Serialize, T: DeserializeOwned>(path: impl Into<String>, body: &B) -> Result<T, ApiError> {
    let body = serde_json::to_string(body).expect("BUG: request bodies always serialise");
    request("PUT", path.into(), Some(body)).await
}

pub async fn patch<B: Serialize, T: DeserializeOwned>(path: impl Into<String>, body: &B) -> Result<T, ApiError> {
    let body = serde_json::to_string(body).expect("BUG: request bodies always serialise");
    request("PATCH", path.into(), Some(body)).await
}

pub async fn delete(path: impl Into<String>) -> Result<(), ApiError> {
    request::<serde_json::Value>("DELETE", path.into(), None).await.map(|_| ())
}

async fn request<T: DeserializeOwned>(method: &'static str, path: String, body: Option<String>) -> Result<T, ApiError> {
    let response = send(ApiRequest { method, path, body }).await?;
    if !(200..300).contains(&response.status) {
        return Err(ApiError::from_response(response.status, &response.body));
    }
    // `204 No Content` decodes as JSON null.
    let body = if response.body.is_empty() { "null" } else { &response.body };
    serde_json::from_str(body).map_err(|e| ApiError {
        status: response.status,
        code: "decode".into(),
        message: format!("unexpected answer from the API: {e}"),
        field: None,
    })
}

#[cfg(not(feature = "hydrate"))]
async fn send(request: ApiRequest) -> Result<ApiResponse, ApiError> {
    // Taken before the first await, while the rendering owner is current.
    let transport = leptos::prelude::use_context::<ServerTransport>()
        .ok_or_else(|| ApiError::network("no API transport while rendering on the server"))?;
    Ok((transport.0)(request).await)
}

/// The browser's `fetch` is not `Send`; resources need `Send` futures. The wasm build is single
/// threaded, so wrapping is sound (SendWrapper checks it).
#[cfg(feature = "hydrate")]
async fn send(request: ApiRequest) -> Result<ApiResponse, ApiError> {
    send_wrapper::SendWrapper::new(fetch(request)).await
}

#[cfg(feature = "hydrate")]
async fn fetch(request: ApiRequest) -> Result<ApiResponse, ApiError> {
    use gloo_net::http::{Method, RequestBuilder};
    let method = match request.method {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        other => return Err(ApiError::network(format!("unsupported method {other}"))),
    };
    let mut builder = RequestBuilder::new(&request.path).method(method);
    if let Some(csrf) = csrf_from_page() {
        builder = builder.header("x-csrf-token", &csrf);
    }
    let prepared = match request.body {
        Some(body) => builder.header("content-type", "application/json").body(body),
        None => builder.build(),
    }
    .map_err(ApiError::network)?;
    let response = prepared.send().await.map_err(ApiError::network)?;
    let status = response.status();
    let body = response.text().await.map_err(ApiError::network)?;
    Ok(ApiResponse { status, body })
}

#[cfg(feature = "hydrate")]
fn csrf_from_page() -> Option<String> {
    use wasm_bindgen::JsCast;
    let meta = web_sys::window()?.document()?.query_selector("meta[name=csrf-token]").ok()??;
    Some(meta.dyn_into::<web_sys::HtmlMetaElement>().ok()?.content())
}

/// Subscribes to a server-sent event stream of the API: `on_event(name, data)` runs for each
/// event of the given names until the calling component is unmounted. On the server it does
/// nothing (the page is rendered from a snapshot; the stream starts in the browser).
pub fn subscribe(url: String, names: &'static [&'static str], on_event: impl Fn(&str, String) + 'static) {
    #[cfg(feature = "hydrate")]
    {
        use futures::StreamExt;
        use gloo_net::eventsource::futures::EventSource;
        let Ok(mut source) = EventSource::new(&url) else { return };
        let mut streams = Vec::new();
        for name in names {
            if let Ok(stream) = source.subscribe(*name) {
                streams.push(stream);
            }
        }
        let mut merged = futures::stream::select_all(streams);
        leptos::task::spawn_local(async move {
            while let Some(Ok((name, message))) = merged.next().await {
                if let Some(data) = message.data().as_string() {
                    on_event(&name, data);
                }
            }
        });
        let source = send_wrapper::SendWrapper::new(source);
        leptos::prelude::on_cleanup(move || source.take().close());
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (url, names, on_event);
    }
}
