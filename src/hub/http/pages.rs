//! The small pages the hub answers with itself: unknown host, unreachable or silent target,
//! bad request, authentication required, body too large, redirect. Text the client sent
//! (a hostname) is escaped before it goes into a page.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, full};
use super::upstream::UpstreamError;
use crate::hub::metrics::{HubMetrics, Rejection};

/// A page with `status`, a title and a sentence; `Connection: close` when `close`.
pub fn page(status: StatusCode, detail: &str, close: bool) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
         <body><h1>{code} {reason}</h1><p>{detail}</p><hr><small>tunnelize</small></body></html>\n",
        code = status.as_u16(),
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 404 for a hostname no tunnel serves.
pub fn unknown_host(host: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        &format!("No tunnel serves <code>{}</code>.", escape(host)),
        false,
    )
}

/// 502 for a request no backend of `host` answered: the tunnel could not reach its target, or
/// the target's answer was not HTTP.
pub fn bad_gateway(host: &str, e: &UpstreamError) -> Response<Body> {
    let host = escape(host);
    let detail = match e {
        UpstreamError::Refused(_)
        | UpstreamError::LinkTimeout
        | UpstreamError::Link(_)
        | UpstreamError::Gone => {
            format!("The tunnel for <code>{host}</code> could not reach its service.")
        }
        UpstreamError::Http(_) => {
            format!("The service behind <code>{host}</code> sent no valid response.")
        }
    };
    page(StatusCode::BAD_GATEWAY, &detail, false)
}

/// 504 for a target that sent no response head within `response_timeout`.
pub fn gateway_timeout(host: &str) -> Response<Body> {
    let detail = format!(
        "The service behind <code>{}</code> did not answer in time.",
        escape(host)
    );
    page(StatusCode::GATEWAY_TIMEOUT, &detail, false)
}

/// 413 for a request body over its proxy's `max_body`, counted as a bad request.
pub fn too_large(metrics: &HubMetrics) -> Response<Body> {
    metrics.reject(Rejection::BadRequest);
    page(
        StatusCode::PAYLOAD_TOO_LARGE,
        "The request body is too large.",
        true,
    )
}

/// 401 asking for basic credentials.
pub fn auth_required() -> Response<Body> {
    let mut response = page(
        StatusCode::UNAUTHORIZED,
        "This site needs a user name and password.",
        false,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tunnelize\", charset=\"UTF-8\""),
    );
    response
}

/// 308 to `location`.
pub fn redirect(location: &str) -> Response<Body> {
    let mut response = page(
        StatusCode::PERMANENT_REDIRECT,
        "This site is served over HTTPS.",
        false,
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn hostnames_are_escaped_in_the_404_page() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
        let page = unknown_host("<b>&'\"");
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        let body = page.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains("<code>&lt;b&gt;&amp;&#39;&quot;</code>"),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("&'"), "{html}");
    }

    #[test]
    fn auth_pages_ask_for_basic_credentials() {
        let page = auth_required();
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
        assert!(
            page.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
    }
}
