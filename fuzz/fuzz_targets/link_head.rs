//! Arbitrary header maps as link stream heads: the request head a tunnel reads
//! (`LinkOpen::from_headers`) and the response head a hub reads (`LinkRefusal::check_response`).
//! HTTP/2 has already parsed these, so the input is header values, not bytes on a socket.
//!
//! Input: segments separated by NUL. The first two bytes of the first segment are the response
//! status; in every other segment the first byte picks the header name (one of the link headers,
//! or the rest of the segment up to `:` as a name) and the rest is the value. Invariants:
//! - nothing panics;
//! - a head `from_headers` accepts turns back into a request whose head reads the same;
//! - `check_response` accepts exactly status 200, and a refusal reads back with its reason
//!   cleaned of what a header cannot carry.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use tunnelize::protocol::{LinkOpen, LinkRefusal};

const NAMES: [&str; 5] = [
    "tunnelize-proxy",
    "tunnelize-client",
    "tunnelize-peer",
    "tunnelize-transport",
    "tunnelize-error",
];

fn headers(segments: &[&[u8]]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for segment in segments {
        let Some((&pick, rest)) = segment.split_first() else {
            continue;
        };
        let (name, value) = match NAMES.get(usize::from(pick) % 8) {
            Some(name) => (HeaderName::from_static(name), rest),
            None => {
                let Some(colon) = rest.iter().position(|b| *b == b':') else {
                    continue;
                };
                let Ok(name) = HeaderName::from_bytes(&rest[..colon]) else {
                    continue;
                };
                (name, &rest[colon + 1..])
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            // `append`: a repeated header is a case the reader must handle too.
            map.append(name, value);
        }
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let mut segments: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let status = match segments.first_mut() {
        Some(first) if first.len() >= 2 => {
            let code = u16::from_be_bytes([first[0], first[1]]);
            *first = &first[2..];
            StatusCode::from_u16(code).ok()
        }
        _ => None,
    };
    let map = headers(&segments);

    if let Ok(open) = LinkOpen::from_headers(&map) {
        let request = open
            .to_request()
            .expect("a head that was read can be written again");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(LinkOpen::from_headers(request.headers()), Ok(open));
    }

    if let Some(status) = status {
        let result = LinkRefusal::check_response(status, &map);
        assert_eq!(result.is_ok(), status == StatusCode::OK);
    }

    let reason = String::from_utf8_lossy(data).into_owned();
    let clean: String = reason
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    let response = LinkRefusal { reason }.to_response();
    let refusal = LinkRefusal::check_response(response.status(), response.headers())
        .expect_err("a refusal is not an acceptance");
    assert_eq!(refusal.reason, clean);
});
