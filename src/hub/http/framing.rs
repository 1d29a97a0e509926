//! A second, strict reading of the request heads a client sends, alongside hyper's.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it drops the
//! length and closes the connection afterwards), which is exactly the ambiguity request
//! smuggling relies on. The hub refuses such requests outright, so it needs to see every head
//! as sent. [`HeadInspector`] is fed every byte read from the client, in order; it finds each
//! request head, judges it, and skips its body by the same framing rules, producing one
//! [`Verdict`] per request in the order hyper will hand the requests over. The request handler
//! pops the verdict for each request and answers 400 (closing the connection) when it is bad.
//! Line ends are CRLF only (RFC 9112 section 2.2 lets a server take a bare LF; hyper does, a
//! target behind the hub may not): a head with a bare LF is refused as well.
//!
//! After a request that asks for an upgrade (or a CONNECT), the rest of the connection is not
//! HTTP any more and inspection stops; the handler closes the connection if the upgrade is
//! refused, so no further request can slip by uninspected.

use std::collections::VecDeque;

/// Most verdicts waiting for hyper to catch up (pipelined requests).
const MAX_PENDING: usize = 256;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// The judgement of one request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Unambiguous.
    Clean,
    /// Refuse with 400 and close; the reason is for logs.
    Ambiguous(&'static str),
}

#[derive(Debug)]
enum State {
    /// Accumulating a head (bytes so far).
    Head(Vec<u8>),
    /// Skipping a fixed-length body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines until an empty one.
    Trailer(Vec<u8>),
    /// No longer HTTP (upgrade, CONNECT) or already judged bad: stop looking.
    Raw,
}

/// Follows the request stream of one client connection.
#[derive(Debug)]
pub struct HeadInspector {
    state: State,
    max_head: usize,
    verdicts: VecDeque<Verdict>,
    /// Heads judged so far (every verdict given, good or bad).
    judged: u64,
}

impl HeadInspector {
    /// An inspector for heads of at most `max_head` bytes (hyper answers 431 beyond; here a
    /// head that long just stops inspection).
    pub fn new(max_head: usize) -> Self {
        HeadInspector {
            state: State::Head(Vec::new()),
            max_head,
            verdicts: VecDeque::new(),
            judged: 0,
        }
    }

    /// Whether the bytes read next belong to a request head not yet complete (the connection
    /// waits for a head, or is in the middle of one).
    pub fn awaiting_head(&self) -> bool {
        matches!(self.state, State::Head(_))
    }

    /// How many heads have been judged so far.
    pub fn judged(&self) -> u64 {
        self.judged
    }

    /// The verdict for the next request hyper hands over. `Clean` when inspection had stopped
    /// (hyper itself then refuses what it cannot parse).
    pub fn next_verdict(&mut self) -> Verdict {
        self.verdicts.pop_front().unwrap_or(Verdict::Clean)
    }

    /// Feeds bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.step(data) {
                Some(rest) => data = rest,
                None => return,
            }
        }
    }

    /// Takes what the current state needs from `data`; the bytes after it, or `None` when
    /// `data` is used up (or inspection has stopped).
    fn step<'d>(&mut self, data: &'d [u8]) -> Option<&'d [u8]> {
        match &mut self.state {
            State::Raw => None,
            State::Head(_) => self.head(data),
            State::Body(left) | State::ChunkData(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.state = match self.state {
                        State::Body(_) => State::Head(Vec::new()),
                        _ => State::ChunkSize(Vec::new()),
                    };
                }
                Some(&data[n as usize..])
            }
            State::ChunkSize(_) => {
                let (text, rest) = self.line(data)?;
                self.state = after_chunk_size(&text);
                Some(rest)
            }
            State::Trailer(_) => {
                let (text, rest) = self.line(data)?;
                // An empty line ends the trailers, and the request.
                self.state = match text.is_empty() {
                    true => State::Head(Vec::new()),
                    false => State::Trailer(Vec::new()),
                };
                Some(rest)
            }
        }
    }

    /// Adds `data` to the head being accumulated; judges the head once it is complete.
    fn head<'d>(&mut self, mut data: &'d [u8]) -> Option<&'d [u8]> {
        let State::Head(buf) = &mut self.state else {
            return None;
        };
        // Skip blank lines between requests, as hyper does.
        if buf.is_empty() {
            let skip = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            data = &data[skip..];
            if data.is_empty() {
                return None;
            }
        }
        let before = buf.len();
        buf.extend_from_slice(data);
        // Search from a little before the new bytes, so a CRLFCRLF split across reads is found.
        let from = before.saturating_sub(3);
        let end = find(&buf[from..], b"\r\n\r\n").map(|pos| from + pos + 4);
        // hyper takes a bare LF as a line end; a head that uses one is refused here, since this
        // reading (CRLF only) would otherwise never find its end and stop inspecting.
        if bare_lf(buf, before, end.unwrap_or(buf.len())) {
            self.refuse("a line of the request head ends in a bare LF");
            return None;
        }
        let Some(end) = end else {
            // Past the limit, or already unparsable: hyper answers it (431, 400) once it has
            // the bytes, so there is nothing to wait for.
            if buf.len() > self.max_head || unparsable(buf) {
                self.state = State::Raw;
            }
            return None;
        };
        let head = std::mem::take(buf);
        self.judge(&head[..end]);
        Some(&data[end - before..])
    }

    /// A complete chunk-size or trailer line out of `data`, and the bytes after it; `None`
    /// while the line is incomplete, or when it grew too long (inspection stops).
    fn line<'d>(&mut self, data: &'d [u8]) -> Option<(Vec<u8>, &'d [u8])> {
        let (State::ChunkSize(line) | State::Trailer(line)) = &mut self.state else {
            return None;
        };
        match take_line(line, data) {
            Ok((Some(text), rest)) => Some((text, rest)),
            Ok((None, _)) => None,
            Err(()) => {
                self.give_up();
                None
            }
        }
    }

    /// Judges the request whose head is being read as ambiguous; nothing after it is read.
    fn refuse(&mut self, reason: &'static str) {
        self.judged += 1;
        if self.verdicts.len() < MAX_PENDING {
            self.verdicts.push_back(Verdict::Ambiguous(reason));
        } else {
            self.verdicts
                .push_back(Verdict::Ambiguous("too many pipelined requests"));
        }
        self.state = State::Raw;
    }

    fn give_up(&mut self) {
        // hyper refuses malformed chunked bodies itself; nothing to judge past this point.
        self.state = State::Raw;
    }

    fn judge(&mut self, head: &[u8]) {
        self.judged += 1;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let (verdict, next) = match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => classify(&req),
            // hyper fails the same head and answers 400 itself.
            _ => (Verdict::Clean, State::Raw),
        };
        if self.verdicts.len() >= MAX_PENDING {
            self.verdicts
                .push_back(Verdict::Ambiguous("too many pipelined requests"));
            self.state = State::Raw;
            return;
        }
        let bad = verdict != Verdict::Clean;
        self.verdicts.push_back(verdict);
        self.state = if bad { State::Raw } else { next };
    }
}

/// Whether the start of a request head already fails to parse (hyper would answer 400 now).
fn unparsable(partial: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    httparse::Request::new(&mut headers).parse(partial).is_err()
}

/// What follows a chunk-size line: that much chunk data and its CRLF, the trailers after the
/// last (zero) chunk, or the end of inspection for a size that does not parse (hyper refuses
/// malformed chunked bodies itself).
fn after_chunk_size(text: &[u8]) -> State {
    let size = text.split(|b| *b == b';').next().unwrap_or_default();
    let size = std::str::from_utf8(size)
        .ok()
        .map(str::trim)
        .and_then(|s| u64::from_str_radix(s, 16).ok());
    match size {
        Some(0) => State::Trailer(Vec::new()),
        Some(n) => State::ChunkData(n.saturating_add(2)),
        None => State::Raw,
    }
}

/// Judges a parsed head and says how its body is framed.
fn classify(req: &httparse::Request<'_, '_>) -> (Verdict, State) {
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut hosts = 0;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if let Some(prev) = content_length
                && prev != h.value
            {
                return (
                    Verdict::Ambiguous("conflicting Content-Length headers"),
                    State::Raw,
                );
            }
            content_length = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if content_length.is_some() && transfer_encoding {
        return (
            Verdict::Ambiguous("both Content-Length and Transfer-Encoding"),
            State::Raw,
        );
    }
    if transfer_encoding && !chunked_last {
        return (
            Verdict::Ambiguous("Transfer-Encoding does not end in chunked"),
            State::Raw,
        );
    }
    if hosts > 1 {
        return (Verdict::Ambiguous("more than one Host header"), State::Raw);
    }
    if upgrade || req.method == Some("CONNECT") {
        return (Verdict::Clean, State::Raw);
    }
    if transfer_encoding {
        return (Verdict::Clean, State::ChunkSize(Vec::new()));
    }
    match content_length {
        Some(value) => match std::str::from_utf8(value)
            .ok()
            .map(str::trim)
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(0) => (Verdict::Clean, State::Head(Vec::new())),
            Some(n) => (Verdict::Clean, State::Body(n)),
            None => (Verdict::Ambiguous("invalid Content-Length"), State::Raw),
        },
        None => (Verdict::Clean, State::Head(Vec::new())),
    }
}

/// Appends `data` to `line` up to a CRLF. Returns the line (without CRLF) and the bytes after
/// it, or `None` if the line is not complete yet; `Err` if the line grows too long.
fn take_line<'d>(line: &mut Vec<u8>, data: &'d [u8]) -> Result<(Option<Vec<u8>>, &'d [u8]), ()> {
    match data.iter().position(|b| *b == b'\n') {
        Some(pos) => {
            line.extend_from_slice(&data[..pos]);
            if line.len() > MAX_LINE {
                return Err(());
            }
            let mut text = std::mem::take(line);
            if text.last() == Some(&b'\r') {
                text.pop();
            }
            Ok((Some(text), &data[pos + 1..]))
        }
        None => {
            line.extend_from_slice(data);
            if line.len() > MAX_LINE {
                Err(())
            } else {
                Ok((None, &[]))
            }
        }
    }
}

/// Whether `buf[from..to]` holds an LF not preceded by a CR (the byte before `from` counts).
fn bare_lf(buf: &[u8], from: usize, to: usize) -> bool {
    (from..to).any(|i| buf[i] == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<Verdict> {
        let mut inspector = HeadInspector::new(64 * 1024);
        for piece in stream.chunks(split.max(1)) {
            inspector.feed(piece);
        }
        std::iter::from_fn(|| inspector.verdicts.pop_front()).collect()
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn clean_pipelined_requests_give_one_clean_verdict_each_at_any_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(GET);
        stream.extend_from_slice(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        stream.extend_from_slice(
            b"POST /y HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        );
        stream.extend_from_slice(GET);
        for split in 1..stream.len() {
            assert_eq!(
                verdicts(&stream, split),
                vec![Verdict::Clean; 4],
                "split {split}"
            );
        }
    }

    #[test]
    fn a_partial_head_is_awaited_while_it_parses_and_given_up_once_it_cannot() {
        for partial in [&b"GE"[..], b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaa"] {
            let mut inspector = HeadInspector::new(1024);
            inspector.feed(partial);
            assert!(inspector.awaiting_head(), "{partial:?}");
        }
        for garbage in [
            &b"\x01\x02 GARBAGE"[..],
            b"GET / HTTP/1.1\r\nBad Name: v\r\n",
            b"\x16\x03\x01",
        ] {
            let mut inspector = HeadInspector::new(1024);
            inspector.feed(garbage);
            assert!(!inspector.awaiting_head(), "{garbage:?}");
            assert_eq!(inspector.next_verdict(), Verdict::Clean, "hyper refuses it");
        }
        let mut inspector = HeadInspector::new(16);
        inspector.feed(b"GET / HTTP/1.1\r\nX-Long: aaaa");
        assert!(!inspector.awaiting_head(), "past max_head");
    }

    #[test]
    fn a_body_that_looks_like_a_request_is_not_judged_as_one() {
        let body =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(GET);
        assert_eq!(verdicts(&stream, 7), vec![Verdict::Clean, Verdict::Clean]);
    }

    #[test]
    fn smuggling_shapes_are_ambiguous() {
        let cases: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
        ];
        for case in cases {
            let got = verdicts(case, 3);
            assert!(
                matches!(got.as_slice(), [Verdict::Ambiguous(_)]),
                "{}: {got:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn a_head_with_a_bare_lf_line_end_is_ambiguous_at_any_split() {
        let heads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n",
        ];
        for head in heads {
            for split in 0..=head.len() {
                assert_eq!(
                    verdicts(head, split),
                    [Verdict::Ambiguous(
                        "a line of the request head ends in a bare LF"
                    )],
                    "{:?} split at {split}",
                    String::from_utf8_lossy(head)
                );
            }
        }
        // A clean request before it keeps its verdict; a bare LF in a body is not a head's.
        let mut stream = GET.to_vec();
        stream.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na\nb");
        stream.extend_from_slice(b"GET /x HTTP/1.1\nHost: a\n\n");
        assert_eq!(
            verdicts(&stream, 7),
            [
                Verdict::Clean,
                Verdict::Clean,
                Verdict::Ambiguous("a line of the request head ends in a bare LF")
            ]
        );
    }

    #[test]
    fn after_an_ambiguous_request_nothing_more_is_judged() {
        let mut stream = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        stream.extend_from_slice(GET);
        assert_eq!(verdicts(&stream, 100).len(), 1);
    }

    #[test]
    fn an_upgrade_request_ends_inspection() {
        let mut stream =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
                .to_vec();
        stream.extend_from_slice(b"\x81\x05hello not http\r\n\r\n");
        assert_eq!(verdicts(&stream, 5), vec![Verdict::Clean]);
    }

    #[test]
    fn missing_verdicts_default_to_clean_and_garbage_never_panics() {
        let mut inspector = HeadInspector::new(1024);
        assert_eq!(inspector.next_verdict(), Verdict::Clean);
        let mut state: u32 = 7;
        for _ in 0..2000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let byte = (state >> 16) as u8;
            inspector.feed(&[byte, b'\r', b'\n']);
        }
    }
}
