//! Dashboard sessions: a login token carried in an HttpOnly cookie, a CSRF token derived from it,
//! the sign-in and sign-out forms (which work without any script), and the guard that sends a
//! browser without a session to the sign-in page.
//!
//! The cookie authenticates exactly like a bearer token (the same [`Principal`], the same
//! permission checks in the service layer); the only difference is that every request made with it
//! that can change something must also carry the CSRF token, in the `x-csrf-token` header or, for
//! the sign-out form, a `csrf` field.

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::extract::ClientAddress;
use crate::services::{SESSION_TTL, ServiceError};

/// The session cookie over plain HTTP (a local instance) ...
pub const SESSION_COOKIE: &str = "berth_session";
/// ... and over HTTPS, where the `__Host-` prefix makes browsers refuse it unless it was set
/// `Secure`, for this host alone (no `Domain`) and `Path=/`: an app on a sibling subdomain cannot
/// plant a session of its choosing (session fixation), and a plain-named cookie is ignored there.
pub const SECURE_SESSION_COOKIE: &str = "__Host-berth_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// An external sign-in's browser binding (see [`sign_in_binding`]), plain and over HTTPS.
const SIGN_IN_COOKIE: &str = "berth_sign_in";
const SECURE_SIGN_IN_COOKIE: &str = "__Host-berth_sign_in";
/// How long a browser has to come back from the identity provider.
const SIGN_IN_COOKIE_SECS: i64 = 600;

/// The CSRF token of a session: a hash of the session's secret, so it needs no storage, changes
/// with every session, and cannot be computed by a page that cannot read the HttpOnly cookie.
pub fn csrf_token(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"berth-csrf\0");
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// The session secret in the request's cookies, if any: over HTTPS only from the `__Host-`
/// cookie.
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    let jar = CookieJar::from_headers(headers);
    let value = |name| jar.get(name).map(|c| c.value().trim().to_string()).filter(|value| !value.is_empty());
    match value(SECURE_SESSION_COOKIE) {
        Some(secret) => Some(secret),
        None if !secure(headers) => value(SESSION_COOKIE),
        None => None,
    }
}

/// The cookie that binds an external sign-in to the browser that started it: a hash of the
/// flow's state. The provider's redirect carries the state in the URL; without the cookie that
/// URL signs nobody in, so an attacker cannot make a victim's browser finish the attacker's
/// sign-in (login CSRF). `SameSite=Lax` still sends it on the provider's top-level redirect.
pub(super) fn sign_in_binding(state: &str, headers: &HeaderMap) -> HeaderValue {
    sign_in_cookie(&state_hash(state), SIGN_IN_COOKIE_SECS, headers)
}

/// Whether the request comes from the browser that started the sign-in with `state`.
pub(super) fn sign_in_bound(state: &str, headers: &HeaderMap) -> bool {
    let jar = CookieJar::from_headers(headers);
    jar.get(sign_in_cookie_name(secure(headers)))
        .is_some_and(|c| constant_time_eq(c.value().as_bytes(), state_hash(state).as_bytes()))
}

/// Clears the binding once the callback has used it.
pub(super) fn sign_in_binding_cleared(headers: &HeaderMap) -> HeaderValue {
    sign_in_cookie("", 0, headers)
}

fn sign_in_cookie_name(secure: bool) -> &'static str {
    if secure { SECURE_SIGN_IN_COOKIE } else { SIGN_IN_COOKIE }
}

fn sign_in_cookie(value: &str, max_age_secs: i64, headers: &HeaderMap) -> HeaderValue {
    let secure = secure(headers);
    let cookie = Cookie::build((sign_in_cookie_name(secure), value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age_secs))
        .secure(secure)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("BUG: a hex hash is a valid cookie value")
}

fn state_hash(state: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"berth-sign-in\0");
    hasher.update(state.as_bytes());
    hex::encode(hasher.finalize())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether a cookie-authenticated request carries the session's CSRF token where it must.
pub fn csrf_ok(method: &Method, headers: &HeaderMap, secret: &str) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    constant_time_eq(sent.as_bytes(), csrf_token(secret).as_bytes())
}

/// A form post must come from a page of this server: browsers send `Origin` on every POST, and a
/// foreign one is refused (login CSRF). Requests without `Origin` (non-browser clients) pass.
/// Over HTTP/2 the host is the request's `:authority` (in the URI), not a `Host` header.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Whether the browser speaks HTTPS to us: the API listener itself is plain HTTP, so only a
/// trusted proxy's `X-Forwarded-Proto` says so (the listener drops anyone else's).
fn secure(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let name = if secure { SECURE_SESSION_COOKIE } else { SESSION_COOKIE };
    let cookie = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age_secs as i64))
        .secure(secure)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("BUG: session secrets are URL-safe")
}

/// Only paths of this site are followed after sign-in (no open redirect), by a strict grammar:
/// one `/`, then anything but `/` or `\\`, then only characters that no browser reads as an
/// authority, a scheme or whitespace to strip (a tab in `/\t/evil.example` is dropped by
/// browsers, which then go to `//evil.example`).
fn local_path(next: Option<&str>) -> &str {
    const MAX: usize = 2048;
    fn allowed(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"/-._~%?=&+,:@".contains(&b)
    }
    match next {
        Some(path)
            if path.len() <= MAX
                && path.starts_with('/')
                && !matches!(path.as_bytes().get(1), Some(b'/' | b'\\'))
                && path.bytes().all(allowed) =>
        {
            path
        }
        _ => "/",
    }
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    email: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn back_to_sign_in(error: &str, next: Option<&str>) -> Response {
    let mut location = format!("/signin?error={error}");
    if let Some(next) = next.filter(|n| n.starts_with('/')) {
        location.push_str("&next=");
        location.push_str(&urlencode(next));
    }
    Redirect::to(&location).into_response()
}

/// What stays unescaped in a path carried as a query value: unreserved characters and `/`.
const QUERY_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

fn urlencode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_PATH).to_string()
}

/// `POST /auth/signin`, the sign-in form: on success the session cookie and a redirect to where
/// the user was going; on failure back to the form with the reason.
pub(super) async fn sign_in(
    State(s): State<AppState>,
    ClientAddress(address): ClientAddress,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return (StatusCode::FORBIDDEN, "sign-in from another site refused").into_response();
    }
    let next = form.next.as_deref();
    match s.services.sign_in_session(&form.email, &form.password, address).await {
        Ok(login) => signed_in(&login.token, local_path(next), &headers),
        Err(ServiceError::TooManyRequests(_)) => back_to_sign_in("rate", next),
        Err(ServiceError::Unauthorized(_) | ServiceError::Validation { .. }) => back_to_sign_in("invalid", next),
        Err(error) => {
            tracing::error!(error = %error, "sign-in failed");
            back_to_sign_in("internal", next)
        }
    }
}

/// The answer to a successful sign-in: the session cookie and a redirect to `to`.
pub(super) fn signed_in(secret: &str, to: &str, headers: &HeaderMap) -> Response {
    let mut response = Redirect::to(to).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(secret, SESSION_TTL.as_secs(), secure(headers)));
    response
}

#[derive(Deserialize)]
pub(super) struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /auth/signout`: revokes the session (so a copied cookie is dead too) and clears it.
pub(super) async fn sign_out(State(s): State<AppState>, headers: HeaderMap, Form(form): Form<SignOutForm>) -> Response {
    if let Some(secret) = session_secret(&headers) {
        if !constant_time_eq(form.csrf.as_bytes(), csrf_token(&secret).as_bytes()) {
            return (StatusCode::FORBIDDEN, "sign-out refused: the form's CSRF token does not match").into_response();
        }
        if let Ok(principal) = s.services.authenticate(&secret).await
            && let Err(error) = s.services.sign_out(&principal).await
        {
            tracing::error!(error = %error, "sign-out failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "sign-out failed; the server log has the details")
                .into_response();
        }
    }
    let mut response = Redirect::to("/signin?signed_out=1").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0, secure(&headers)));
    response
}

/// What a page request knows about its session, for the dashboard's server-side rendering.
#[derive(Clone)]
pub struct PageSession {
    pub secret: String,
}

/// Sends browsers without a valid session to the sign-in page (the pages themselves then fetch
/// their data through the API with the cookie, where every permission is checked).
pub(super) async fn require_session(State(s): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/signin" || path.starts_with("/invite/") || path.starts_with("/pkg/") || path == "/favicon.ico" {
        return next.run(request).await;
    }
    match session_secret(request.headers()) {
        Some(secret) if s.services.authenticate(&secret).await.is_ok() => {
            request.extensions_mut().insert(PageSession { secret });
            next.run(request).await
        }
        _ => {
            let wanted = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let location =
                if wanted == "/" { "/signin".to_string() } else { format!("/signin?next={}", urlencode(wanted)) };
            let mut response = Redirect::to(&location).into_response();
            if session_secret(request.headers()).is_some() {
                // A stale cookie (expired, revoked by a password change or sign-out elsewhere).
                response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0, secure(request.headers())));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; berth_session=s3cret; b=2"));
        assert_eq!(session_secret(&headers).as_deref(), Some("s3cret"));
        headers.insert(header::COOKIE, HeaderValue::from_static("berth_session="));
        assert_eq!(session_secret(&headers), None);
    }

    #[test]
    fn over_https_the_session_is_a_host_only_secure_cookie_and_a_planted_plain_one_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        // A sibling subdomain's app planted `berth_session` (Domain=example.com): not a session here.
        headers.insert(header::COOKIE, HeaderValue::from_static("berth_session=planted"));
        assert_eq!(session_secret(&headers), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("berth_session=planted; __Host-berth_session=mine"));
        assert_eq!(session_secret(&headers).as_deref(), Some("mine"));
        let cookie = session_cookie("mine", 60, secure(&headers));
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.starts_with("__Host-berth_session=mine"), "{cookie}");
        assert!(cookie.contains("Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"), "{cookie}");
        // Over plain HTTP (a local instance) the plain name, without Secure.
        let plain = session_cookie("mine", 60, false);
        assert!(
            plain.to_str().unwrap().starts_with("berth_session=mine") && !plain.to_str().unwrap().contains("Secure")
        );
    }

    #[test]
    fn mutations_need_the_csrf_token_and_reads_do_not() {
        let mut headers = HeaderMap::new();
        assert!(csrf_ok(&Method::GET, &headers, "s"));
        assert!(!csrf_ok(&Method::POST, &headers, "s"));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf_token("other")).unwrap());
        assert!(!csrf_ok(&Method::DELETE, &headers, "s"));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf_token("s")).unwrap());
        assert!(csrf_ok(&Method::DELETE, &headers, "s"));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever `next` holds, the redirect stays on this site: one leading `/`, no
            /// second `/` or `\\` after it, no character a browser strips or reads as an authority.
            #[test]
            fn any_next_leads_to_a_local_path(next in ".{0,80}") {
                let path = local_path(Some(&next));
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.starts_with("//") && !path.starts_with("/\\"));
                prop_assert!(path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'), "{path:?}");
            }
        }
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/teams/main/apps")), "/teams/main/apps");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
        // Browsers strip tabs and newlines from URLs: `/\t/evil` would become `//evil`.
        for hostile in ["/\t/evil.example", "/\n/evil.example", "/\r//evil.example", "/ /evil.example", "/\u{0}x"] {
            assert_eq!(local_path(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(local_path(Some("javascript:alert(1)")), "/");
        assert_eq!(local_path(Some("/a\\b")), "/");
        assert_eq!(local_path(Some("/é")), "/");
        assert_eq!(local_path(Some(&format!("/{}", "a".repeat(5000)))), "/");
        assert_eq!(local_path(Some("/teams/main/apps/web?tab=logs&x=%2F")), "/teams/main/apps/web?tab=logs&x=%2F");
        assert_eq!(local_path(Some("/")), "/");
    }

    #[test]
    fn paths_carried_in_queries_are_escaped() {
        assert_eq!(urlencode("/teams/main/apps?x=1&y=é"), "/teams/main/apps%3Fx%3D1%26y%3D%C3%A9");
    }

    #[test]
    fn foreign_origins_are_refused() {
        let uri = axum::http::Uri::from_static("/auth/signin");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("berth.example:8000"));
        assert!(same_origin(&headers, &uri));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://berth.example:8000"));
        assert!(same_origin(&headers, &uri));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&headers, &uri));
        // HTTP/2 has no Host header: the authority of the request's URI counts.
        let h2 = axum::http::Uri::from_static("https://berth.example:7443/auth/signin");
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://berth.example:7443"));
        assert!(same_origin(&headers, &h2));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers, &h2));
    }
}
