//! A TCP proxy on 127.0.0.1 that breaks connections on purpose: put in front of a
//! [`crate::registry::Registry`], it shows what a client does when a registry connection dies
//! in the middle of a manifest or a blob. Plain std threads: one accepting (nonblocking, polled
//! every 5 ms, so that it stops), two per connection (one per direction).
//!
//! The cut is per connection and counts the bytes of **both directions together**: with
//! `cut_after = Some(n)` a connection forwards exactly `n` bytes in all, then both of its
//! sockets are shut down (the client sees its connection end mid-response or mid-upload, the
//! server sees its peer go away). [`FaultProxy::set_cut_after`] changes the limit for live and
//! later connections alike, e.g. to let a retry through.
//!
//! [`FaultProxy::start_answering`] makes an HTTP/1.1 proxy of it instead, that answers some
//! requests itself with an error status: it reads each request head a client sends (up to the
//! blank line) and its body (`Content-Length` or chunked), and either forwards both to the
//! target or, for the first `times` requests whose target (path and query) contains `only`,
//! discards the body and answers `status` with a registry's JSON error envelope, `Retry-After:
//! 1` and `Connection: close`, then closes that connection. It counts requests, not
//! connections: a kept-alive connection carries several, each decided on its own. Answers come
//! back from the target byte for byte; the cut applies in this mode too.
//!
//! [`FaultProxy::start_corrupting`] makes an HTTP/1.1 proxy of it that forwards every request
//! but alters answers: it reads requests as the answering mode does and, on the way back, each
//! response's head and body (`Content-Length`, chunked, or up to the end of the connection),
//! pairing responses with requests in order; the body of a 2xx response to a `GET` whose target
//! contains `only` gets the byte at offset `at` of its payload (chunk framing not counted)
//! XORed with `0xff`. The head, `Content-Length` included, and every other byte pass
//! unchanged, so the client gets a body of the announced size whose digest is wrong.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `cut_after` as stored: no limit.
const NEVER: u64 = u64::MAX;

/// The longest request head (request line and header fields) the answering mode reads; a
/// longer one ends its connection.
const MAX_HEAD: usize = 64 << 10;

pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    cut_after: AtomicU64,
    accepted: AtomicUsize,
    cut: AtomicUsize,
    forwarded: AtomicU64,
    /// Some: the answering mode (HTTP requests parsed, some answered here)
    answer: Option<Answer>,
    /// Some: the corrupting mode (HTTP requests and responses parsed, some bodies altered)
    corrupt: Option<Corrupt>,
    requests: AtomicUsize,
    injected: AtomicUsize,
    // every connection, to shut down on drop (weak: a finished one closes its sockets)
    conns: Mutex<Vec<Weak<Conn>>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// What the answering mode answers, and to which requests.
struct Answer {
    status: u16,
    /// only requests whose target contains this (None: every request)
    only: Option<String>,
    /// answers left to give
    left: AtomicUsize,
    started: Instant,
    /// every request answered: when (since the start) and its request line
    log: Mutex<Vec<(Duration, String)>>,
}

impl Answer {
    /// Whether to answer this request here (and if so, one answer fewer is left).
    fn takes(&self, target: &str) -> bool {
        self.only.as_deref().is_none_or(|o| target.contains(o))
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }

    /// The whole answer: status line, fields, and (not to a HEAD) the JSON error envelope.
    fn response(&self, method: &str) -> Vec<u8> {
        let (reason, code) = match self.status {
            429 => ("Too Many Requests", "TOOMANYREQUESTS"),
            500 => ("Internal Server Error", "UNAVAILABLE"),
            502 => ("Bad Gateway", "UNAVAILABLE"),
            503 => ("Service Unavailable", "UNAVAILABLE"),
            504 => ("Gateway Timeout", "UNAVAILABLE"),
            _ => ("Injected Error", "UNAVAILABLE"),
        };
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"injected"}}]}}"#);
        let mut r = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nRetry-After: 1\r\n\
             Connection: close\r\nContent-Type: application/json\r\n\r\n",
            self.status,
            body.len()
        );
        if method != "HEAD" {
            r.push_str(&body);
        }
        r.into_bytes()
    }
}

/// What the corrupting mode alters.
struct Corrupt {
    /// only responses to GETs whose target contains this
    only: String,
    /// the offset in the body of the byte altered (a shorter body passes unchanged)
    at: u64,
    /// the request line of every response altered, in order
    log: Mutex<Vec<String>>,
}

/// A request forwarded in the corrupting mode, its response not yet seen.
struct Pending {
    /// a HEAD: its response has no body, whatever its fields say
    head: bool,
    /// Some(request line): the response's body is to be altered
    alter: Option<String>,
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// the corrupting mode: the requests forwarded on this connection not yet answered
    pending: Mutex<VecDeque<Pending>>,
    /// bytes forwarded (or claimed for forwarding) in both directions
    crossed: AtomicU64,
    cut: AtomicBool,
}

impl Conn {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1:<free port> and forwards every connection to `target`
    /// (`HOST:PORT`, a loopback address), cutting each after `cut_after` bytes (both directions
    /// counted) when it is Some.
    pub fn start(target: &str, cut_after: Option<u64>) -> FaultProxy {
        launch(target, cut_after, None, None)
    }

    /// Listens on 127.0.0.1:<free port> as an HTTP/1.1 proxy to `target` (`HOST:PORT`, a
    /// loopback address) that answers the first `times` requests whose target (path and
    /// query) contains `only` (every request when None) with `status` (4xx or 5xx: 429 says
    /// `TOOMANYREQUESTS`, others `UNAVAILABLE`) and closes their connection; it forwards every
    /// other request. `times` may be `usize::MAX`: always.
    pub fn start_answering(
        target: &str,
        status: u16,
        times: usize,
        only: Option<&str>,
    ) -> FaultProxy {
        assert!(
            (400..600).contains(&status),
            "the fault proxy answers errors only, not {status}"
        );
        let answer = Answer {
            status,
            only: only.map(str::to_string),
            left: AtomicUsize::new(times),
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
        };
        launch(target, None, Some(answer), None)
    }

    /// Listens on 127.0.0.1:<free port> as an HTTP/1.1 proxy to `target` (`HOST:PORT`, a
    /// loopback address) that forwards every request and every response, but XORs the body
    /// byte at offset `at` (0: the first) with `0xff` in each 2xx response to a `GET` whose
    /// target (path and query) contains `only`, e.g. `/blobs/sha256:<hex>`; a body of `at`
    /// bytes or fewer passes unchanged. The response head, `Content-Length` included, is left
    /// as it is.
    pub fn start_corrupting(target: &str, only: &str, at: u64) -> FaultProxy {
        let corrupt = Corrupt {
            only: only.to_string(),
            at,
            log: Mutex::new(Vec::new()),
        };
        launch(target, None, None, Some(corrupt))
    }
    /// `127.0.0.1:PORT`, to give clients instead of the target's address.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Changes the limit of every connection, live ones included (each still counts from its
    /// own start); None forwards everything from now on.
    pub fn set_cut_after(&self, cut_after: Option<u64>) {
        self.shared
            .cut_after
            .store(cut_after.unwrap_or(NEVER), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections cut so far (each counted once).
    pub fn cut(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far, both directions, all connections.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Answering and corrupting modes: the HTTP requests received so far (answered here or
    /// forwarded).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answering mode: the requests answered here with the error status so far.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Answering mode: the requests answered here, in order: when (since the proxy started)
    /// and the request line (`GET /v2/.../blobs/sha256:... HTTP/1.1`).
    pub fn injections(&self) -> Vec<(Duration, String)> {
        match &self.shared.answer {
            Some(a) => a.log.lock().unwrap().clone(),
            None => Vec::new(),
        }
    }

    /// Corrupting mode: the request line of every response whose body was altered so far, in
    /// order (logged before the altered byte is sent on).
    pub fn corrupted(&self) -> Vec<String> {
        match &self.shared.corrupt {
            Some(c) => c.log.lock().unwrap().clone(),
            None => Vec::new(),
        }
    }
}

fn launch(
    target: &str,
    cut_after: Option<u64>,
    answer: Option<Answer>,
    corrupt: Option<Corrupt>,
) -> FaultProxy {
    let target: SocketAddr = target
        .parse()
        .unwrap_or_else(|e| panic!("fault proxy target {target:?}: {e}"));
    assert!(
        target.ip().is_loopback(),
        "the fault proxy only forwards to loopback, not {target}"
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shared = Arc::new(Shared {
        target,
        stop: AtomicBool::new(false),
        cut_after: AtomicU64::new(cut_after.unwrap_or(NEVER)),
        accepted: AtomicUsize::new(0),
        cut: AtomicUsize::new(0),
        forwarded: AtomicU64::new(0),
        answer,
        corrupt,
        requests: AtomicUsize::new(0),
        injected: AtomicUsize::new(0),
        conns: Mutex::new(Vec::new()),
        pumps: Mutex::new(Vec::new()),
    });
    let sh = shared.clone();
    let acceptor = std::thread::spawn(move || accept_loop(listener, sh));
    FaultProxy {
        addr,
        shared,
        acceptor: Some(acceptor),
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // no connection is added any more: end the live ones, then wait for their threads
        for c in self.shared.conns.lock().unwrap().drain(..) {
            if let Some(c) = c.upgrade() {
                c.shutdown();
            }
        }
        let pumps: Vec<_> = self.shared.pumps.lock().unwrap().drain(..).collect();
        for p in pumps {
            let _ = p.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                connect(client, &shared);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("fault proxy accept: {e}"),
        }
    }
}

/// Connects the accepted client to the target and starts its two pumps (or drops the client
/// when the target does not answer).
fn connect(client: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        server,
        pending: Mutex::new(VecDeque::new()),
        crossed: AtomicU64::new(0),
        cut: AtomicBool::new(false),
    });
    shared.conns.lock().unwrap().push(Arc::downgrade(&conn));
    if shared.cut_after.load(Ordering::SeqCst) == 0 {
        cut(&conn, shared);
        return;
    }
    let mut pumps = shared.pumps.lock().unwrap();
    for upstream in [true, false] {
        let (conn, sh) = (conn.clone(), shared.clone());
        pumps.push(std::thread::spawn(move || {
            let http = sh.answer.is_some() || sh.corrupt.is_some();
            if upstream && http {
                http_pump(&conn, &sh)
            } else if sh.corrupt.is_some() {
                response_pump(&conn, &sh)
            } else {
                pump(&conn, upstream, &sh)
            }
        }));
    }
}

/// Copies one direction (client → server when `upstream`) until EOF, an error or the cut.
fn pump(conn: &Conn, upstream: bool, shared: &Shared) {
    let (mut from, to) = if upstream {
        (&conn.client, &conn.server)
    } else {
        (&conn.server, &conn.client)
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // a half close passes through; the other direction goes on
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.shutdown();
                return;
            }
        };
        if !pass(conn, to, &buf[..n], shared) {
            return;
        }
    }
}

/// Forwards `data` to `to` within the connection's limit; false when the connection ended
/// (cut here, or `to` gone), its sockets then shut down.
fn pass(conn: &Conn, mut to: &TcpStream, data: &[u8], shared: &Shared) -> bool {
    let n = data.len() as u64;
    let limit = shared.cut_after.load(Ordering::SeqCst);
    let before = conn.crossed.fetch_add(n, Ordering::SeqCst);
    let allowed = if limit == NEVER {
        n
    } else {
        limit.saturating_sub(before).min(n)
    };
    if allowed > 0 {
        if to.write_all(&data[..allowed as usize]).is_err() {
            conn.shutdown();
            return false;
        }
        shared.forwarded.fetch_add(allowed, Ordering::SeqCst);
    }
    if limit != NEVER && before + n >= limit {
        cut(conn, shared);
        return false;
    }
    true
}

/// The answering and corrupting modes' client → server direction: request by request, each
/// forwarded (head and body) or answered here, until EOF, an error, the cut or an answer given.
fn http_pump(conn: &Conn, shared: &Shared) {
    let mut from = Requests::new(&conn.client);
    loop {
        let head = match from.head() {
            Ok(Some(head)) => head,
            Ok(None) => {
                // EOF between requests: a half close passes through
                let _ = conn.server.shutdown(Shutdown::Write);
                return;
            }
            Err(_) => {
                conn.shutdown();
                return;
            }
        };
        let Some(req) = Head::parse(&head) else {
            // not HTTP/1.x: nothing to forward it as
            conn.shutdown();
            return;
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(answer) = shared.answer.as_ref().filter(|a| a.takes(&req.target)) {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            answer
                .log
                .lock()
                .unwrap()
                .push((answer.started.elapsed(), req.line.clone()));
            // the body is read (and dropped) first: the client then reads the answer, where
            // an unread body could make closing the socket reset the connection
            if from.body(req.body, &mut |_| true) {
                let _ = (&conn.client).write_all(&answer.response(&req.method));
            }
            conn.shutdown();
            return;
        }
        if let Some(corrupt) = &shared.corrupt {
            // queued before the request leaves: its response cannot come back first
            let alter = req.method == "GET" && req.target.contains(&corrupt.only);
            conn.pending.lock().unwrap().push_back(Pending {
                head: req.method == "HEAD",
                alter: alter.then(|| req.line.clone()),
            });
        }
        let forwarded = pass(conn, &conn.server, &head, shared)
            && from.body(req.body, &mut |b| pass(conn, &conn.server, b, shared));
        if !forwarded {
            conn.shutdown();
            return;
        }
    }
}

/// The corrupting mode's server → client direction: response by response, each head and body
/// forwarded (the body of one its request marked to alter with its byte at `at` flipped),
/// until EOF, an error or the cut.
fn response_pump(conn: &Conn, shared: &Shared) {
    let corrupt = shared.corrupt.as_ref().expect("the corrupting mode");
    let mut from = Requests::new(&conn.server);
    loop {
        let head = match from.head() {
            Ok(Some(head)) => head,
            Ok(None) => {
                let _ = conn.client.shutdown(Shutdown::Write);
                return;
            }
            Err(_) => {
                conn.shutdown();
                return;
            }
        };
        let Some((status, body)) = parse_response(&head) else {
            conn.shutdown();
            return;
        };
        if !pass(conn, &conn.client, &head, shared) {
            return;
        }
        if (100..200).contains(&status) {
            // an interim answer (100 Continue): the final one follows
            continue;
        }
        let pending = conn.pending.lock().unwrap().pop_front();
        let (to_head, alter) = pending.map_or((false, None), |p| (p.head, p.alter));
        let body = if to_head || status == 204 || status == 304 {
            Body::None
        } else {
            body
        };
        let mut alter = alter.filter(|_| (200..300).contains(&status));
        let mut at = 0u64;
        let forwarded = from.body_parts(body, &mut |bytes, payload| {
            let end = at + bytes.len() as u64;
            if !payload {
                return pass(conn, &conn.client, bytes, shared);
            }
            let start = at;
            at = end;
            match alter.take() {
                Some(line) if (start..end).contains(&corrupt.at) => {
                    let mut bytes = bytes.to_vec();
                    bytes[(corrupt.at - start) as usize] ^= 0xff;
                    corrupt.log.lock().unwrap().push(line);
                    pass(conn, &conn.client, &bytes, shared)
                }
                other => {
                    alter = other;
                    pass(conn, &conn.client, bytes, shared)
                }
            }
        });
        if !forwarded {
            conn.shutdown();
            return;
        }
    }
}

/// A response head's status and how its body is delimited (without a length or chunking: up
/// to the end of the connection); None when it is not an HTTP/1.x response.
fn parse_response(head: &[u8]) -> Option<(u16, Body)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut words = lines.next()?.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let body = match framing(lines)? {
        (true, _) => Body::Chunked,
        (false, Some(0)) => Body::None,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::Close,
    };
    Some((status, body))
}

/// A head's framing fields: whether it is chunked, and its `Content-Length`; None when the
/// length is not a number.
fn framing<'a>(fields: impl Iterator<Item = &'a str>) -> Option<(bool, Option<u64>)> {
    let (mut length, mut chunked) = (None, false);
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some((chunked, length))
}

/// How a request's (or response's) body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    /// a response's, up to the end of the connection
    Close,
}

/// What the answering mode needs of a request head.
#[derive(Debug)]
struct Head {
    /// the request line
    line: String,
    method: String,
    /// the request target (path and query)
    target: String,
    body: Body,
}

impl Head {
    /// Parses a head (through its blank line); None when it is not an HTTP/1.x request.
    fn parse(head: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(head).ok()?;
        let mut lines = text.split("\r\n");
        let line = lines.next()?;
        let mut words = line.split(' ');
        let (method, target, version) = (words.next()?, words.next()?, words.next()?);
        if !version.starts_with("HTTP/1.") || words.next().is_some() {
            return None;
        }
        let (chunked, length) = framing(lines)?;
        // chunked wins over a length (RFC 9112 §6.3)
        let body = match (chunked, length) {
            (true, _) => Body::Chunked,
            (false, Some(n)) if n > 0 => Body::Length(n),
            _ => Body::None,
        };
        Some(Head {
            line: line.to_string(),
            method: method.to_string(),
            target: target.to_string(),
            body,
        })
    }
}

/// A reader of HTTP requests from a socket: what was read past a head or body waits in `buf`.
struct Requests<'a> {
    from: &'a TcpStream,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl<'a> Requests<'a> {
    fn new(from: &'a TcpStream) -> Requests<'a> {
        Requests {
            from,
            buf: Vec::new(),
            chunk: vec![0u8; 64 * 1024],
        }
    }

    /// Reads more into `buf`; the count read, 0 at EOF.
    fn fill(&mut self) -> std::io::Result<usize> {
        loop {
            match self.from.read(&mut self.chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request head, through its blank line; None at EOF before its first byte.
    fn head(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n\r\n") {
                let end = searched + i + 4;
                return Ok(Some(self.buf.drain(..end).collect()));
            }
            searched = self.buf.len().saturating_sub(3);
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::Error::other("request head too long"));
            }
            if self.fill()? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// One line (of a chunked body), through its CRLF.
    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::Error::other("chunk line too long"));
            }
            if self.fill()? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Hands the next `n` bytes to `sink` as they come; false when they end early or `sink`
    /// returns false.
    fn take(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        while n > 0 {
            if self.buf.is_empty() && !matches!(self.fill(), Ok(k) if k > 0) {
                return false;
            }
            let k = n.min(self.buf.len() as u64) as usize;
            if !sink(&self.buf[..k]) {
                return false;
            }
            self.buf.drain(..k);
            n -= k as u64;
        }
        true
    }

    /// Hands a request's body to `sink`, framing (chunk sizes, trailers) included; false when
    /// it ends early, is malformed, or `sink` returns false.
    fn body(&mut self, body: Body, sink: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.body_parts(body, &mut |bytes, _| sink(bytes))
    }

    /// [`Requests::body`], telling `sink` whether the bytes are payload (true) or framing.
    fn body_parts(&mut self, body: Body, sink: &mut dyn FnMut(&[u8], bool) -> bool) -> bool {
        match body {
            Body::None => true,
            Body::Length(n) => self.take(n, &mut |b| sink(b, true)),
            Body::Close => loop {
                if self.buf.is_empty() {
                    match self.fill() {
                        Ok(0) => return true,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
                if !sink(&self.buf, true) {
                    return false;
                }
                self.buf.clear();
            },
            Body::Chunked => loop {
                let Ok(line) = self.line() else { return false };
                if !sink(&line, false) {
                    return false;
                }
                let text = String::from_utf8_lossy(&line);
                let size = text.trim_end().split(';').next().unwrap_or("").trim();
                let Ok(size) = u64::from_str_radix(size, 16) else {
                    return false;
                };
                if size == 0 {
                    // trailer fields, up to the empty line
                    loop {
                        let Ok(line) = self.line() else { return false };
                        if !sink(&line, false) {
                            return false;
                        }
                        if line == b"\r\n" {
                            return true;
                        }
                    }
                }
                // the data, then its CRLF
                if !self.take(size, &mut |b| sink(b, true))
                    || !self.take(2, &mut |b| sink(b, false))
                {
                    return false;
                }
            },
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn cut(conn: &Conn, shared: &Shared) {
    if !conn.cut.swap(true, Ordering::SeqCst) {
        shared.cut.fetch_add(1, Ordering::SeqCst);
    }
    conn.shutdown();
}

/// A server on 127.0.0.1 that, per connection, reads to EOF, reports how many bytes it got
/// and then answers them with that count (8 bytes, little endian).
fn counting_server() -> (String, std::sync::mpsc::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let n = got.len() as u64;
            let _ = c.write_all(&n.to_le_bytes());
            if tx.send(n).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Sends `len` bytes through `proxy`, half-closes, and returns what came back.
fn exchange(proxy: &FaultProxy, len: usize) -> Vec<u8> {
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // the cut may end the connection while this still writes
    let _ = c.write_all(&vec![7u8; len]);
    let _ = c.shutdown(Shutdown::Write);
    let mut back = Vec::new();
    let _ = c.read_to_end(&mut back);
    back
}

#[test]
fn fault_proxy_forwards_then_cuts_at_the_byte() {
    let (target, got) = counting_server();
    let wait = |rx: &std::sync::mpsc::Receiver<u64>| rx.recv_timeout(Duration::from_secs(10));

    // no limit: everything both ways, half closes passed on
    let proxy = FaultProxy::start(&target, None);
    let back = exchange(&proxy, 300_000);
    assert_eq!(wait(&got).unwrap(), 300_000);
    assert_eq!(back, 300_000u64.to_le_bytes());
    assert_eq!((proxy.accepted(), proxy.cut()), (1, 0));
    assert_eq!(proxy.forwarded(), 300_008);

    // cut after 1000 bytes: the server gets exactly those, its answer never arrives
    proxy.set_cut_after(Some(1000));
    let back = exchange(&proxy, 300_000);
    assert_eq!(wait(&got).unwrap(), 1000);
    assert!(back.is_empty(), "nothing crosses after the cut: {back:?}");
    assert_eq!((proxy.accepted(), proxy.cut()), (2, 1));

    // both directions count: 100 bytes up, then the 8-byte answer is cut after 4
    proxy.set_cut_after(Some(104));
    let back = exchange(&proxy, 100);
    assert_eq!(wait(&got).unwrap(), 100);
    assert_eq!(back, 100u64.to_le_bytes()[..4]);
    assert_eq!((proxy.accepted(), proxy.cut()), (3, 2));

    // a limit of 0 ends a connection at once
    let closed = FaultProxy::start(&target, Some(0));
    assert!(exchange(&closed, 10).is_empty());
    assert_eq!((closed.accepted(), closed.cut()), (1, 1));
}

#[test]
fn fault_proxy_stops_on_drop() {
    let (target, _got) = counting_server();
    let proxy = FaultProxy::start(&target, None);
    let addr = proxy.addr();
    // a live connection does not keep it from stopping
    let mut live = TcpStream::connect(&addr).unwrap();
    live.write_all(b"partial").unwrap();
    while proxy.accepted() == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(proxy);
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    // ended by the proxy: EOF or a reset, never a timeout
    match live.read_to_end(&mut buf) {
        Ok(_) => assert!(buf.is_empty()),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    assert!(
        TcpStream::connect(&addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn fault_proxy_in_front_of_a_registry() {
    use crate::common::*;
    use crate::registry::*;

    let w = scratch();
    let registry = Registry::start();
    // a 4 MiB incompressible layer
    let (layout, layer) = small_layout(&w.path().join("img"), "t", 4 << 20);
    registry.push_oci_layout(&layout, "fault/img:t");
    let direct = registry.inspect("fault/img:t");

    // no limit: skopeo through the proxy sees what it sees directly
    let proxy = FaultProxy::start(&registry.addr(), None);
    let through = registry.client().via(&proxy.addr());
    let out = through.inspect("fault/img:t", false);
    assert_ok(&out);
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["Digest"], direct["Digest"]);
    assert_eq!(seen["Layers"], direct["Layers"]);
    assert!(proxy.accepted() > 0);
    assert_eq!(proxy.cut(), 0);

    // cut after 64 KiB per connection: pulling the 4 MiB layer fails
    proxy.set_cut_after(Some(64 << 10));
    let pulled = w.path().join("pulled");
    let out = through.pull("fault/img:t", &format!("{}:t", s(&pulled)));
    assert!(
        !out.status.success(),
        "a pull through connections cut after 64 KiB succeeded ({} cut):\n{}",
        proxy.cut(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proxy.cut() > 0);

    // and so does pushing it: no blob upload completes, no manifest is stored
    // (another layer: skopeo's blob-info cache knows the first is here and would mount it)
    let (layout2, layer2) = small_layout(&w.path().join("img2"), "t", (4 << 20) + 1);
    let (puts, manifests) = (registry.blob_puts(), registry.manifest_puts());
    let cut_before = proxy.cut();
    let out = through.push(&layout2, "fault/again:t");
    assert!(
        !out.status.success(),
        "a push through connections cut after 64 KiB succeeded"
    );
    assert!(proxy.cut() > cut_before);
    let uploaded_layer = registry.requests().iter().any(|r| {
        r.is_blob_put() && r.path().starts_with("/v2/fault/again/") && r.uri.contains(&layer2[7..])
    });
    assert!(!uploaded_layer, "the cut layer upload completed");
    assert_eq!(registry.manifest_puts(), manifests);
    assert!(
        registry.blob_puts() <= puts + 1,
        "at most the config got through"
    );

    // healed: the same proxy lets the pull through, and it holds the layer pushed
    proxy.set_cut_after(None);
    let pulled = w.path().join("pulled-again");
    assert_ok(&through.pull("fault/img:t", &format!("{}:t", s(&pulled))));
    let sha = layer.strip_prefix("sha256:").unwrap();
    assert_eq!(
        std::fs::read(pulled.join("blobs/sha256").join(sha)).unwrap(),
        std::fs::read(w.path().join("img/blobs/sha256").join(sha)).unwrap()
    );
}

/// An HTTP/1.1 server on 127.0.0.1 keeping connections alive: it answers every request 200
/// with `METHOD TARGET BODYLEN` (nothing to a HEAD) and reports each request, its raw body
/// (framing included) with it.
fn http_server() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(c) = c else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut requests = Requests::new(&c);
                while let Ok(Some(head)) = requests.head() {
                    let req = Head::parse(&head).expect("an HTTP request");
                    let mut body = Vec::new();
                    assert!(requests.body(req.body, &mut |b| {
                        body.extend_from_slice(b);
                        true
                    }));
                    let text = format!("{} {} {}", req.method, req.target, body.len());
                    let mut answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len());
                    if req.method != "HEAD" {
                        answer.push_str(&text);
                    }
                    if (&c).write_all(answer.as_bytes()).is_err()
                        || tx.send((req.line, body)).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends one request on `c` and reads its answer: the status, the header block, the body
/// (by its Content-Length; none to a HEAD).
fn roundtrip(c: &TcpStream, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    (&*c).write_all(head.as_bytes()).unwrap();
    (&*c).write_all(body).unwrap();
    let mut answers = Requests::new(c);
    let head_bytes = answers.head().unwrap().expect("an answer");
    let text = String::from_utf8(head_bytes).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut got = Vec::new();
    if !head.starts_with("HEAD ") {
        assert!(answers.take(length, &mut |b| {
            got.extend_from_slice(b);
            true
        }));
    }
    assert!(answers.buf.is_empty(), "nothing follows the answer");
    (status, text, got)
}

/// Whether the peer closed `c` (EOF or a reset, within 10 s).
fn closed(c: &TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    match (&*c).read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn fault_proxy_answers_the_first_matching_requests() {
    let (target, seen) = http_server();
    let wait = || seen.recv_timeout(Duration::from_secs(10)).unwrap();
    let proxy = FaultProxy::start_answering(&target, 503, 2, Some("/blobs/"));
    let addr = proxy.addr();
    let connect = || {
        let c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };

    // one kept-alive connection: the ping passes, the blob upload (and its body) is answered
    let c = connect();
    let (status, _, body) = roundtrip(&c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", b"");
    assert_eq!((status, body), (200, b"GET /v2/ 0".to_vec()));
    assert_eq!(wait().0, "GET /v2/ HTTP/1.1");
    let put = "PUT /v2/a/blobs/uploads/u?digest=sha256%3A00 HTTP/1.1\r\nHost: x\r\n\
               Content-Length: 100000\r\n\r\n";
    let (status, head, body) = roundtrip(&c, put, &[7u8; 100_000]);
    assert_eq!(status, 503);
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nRetry-After: 1\r\n") && head.contains("\r\nConnection: close\r\n"));
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["errors"][0]["code"], "UNAVAILABLE");
    assert!(closed(&c), "an answered request's connection is closed");

    // a chunked body is read to its end before the answer too
    let c = connect();
    let chunked =
        "POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, _, _) = roundtrip(&c, chunked, b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(status, 503);
    assert!(closed(&c));

    // both answers given: the same requests are forwarded, bodies byte for byte, several on
    // one connection
    let c = connect();
    let (status, _, body) = roundtrip(&c, chunked, b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(
        (status, body),
        (200, b"POST /v2/a/blobs/uploads/ 15".to_vec())
    );
    assert_eq!(wait().1, b"5\r\nhello\r\n0\r\n\r\n");
    let (status, _, body) = roundtrip(&c, put, &[7u8; 100_000]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(wait().1, vec![7u8; 100_000]);
    let (status, _, _) = roundtrip(
        &c,
        "HEAD /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(wait().0, "HEAD /v2/a/blobs/sha256:00 HTTP/1.1");

    assert_eq!(
        (proxy.requests(), proxy.injected(), proxy.accepted()),
        (6, 2, 3)
    );
    let lines: Vec<String> = proxy.injections().into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        lines,
        [
            "PUT /v2/a/blobs/uploads/u?digest=sha256%3A00 HTTP/1.1",
            "POST /v2/a/blobs/uploads/ HTTP/1.1"
        ]
    );

    // 429 to everything: TOOMANYREQUESTS, and no body to a HEAD
    let busy = FaultProxy::start_answering(&target, 429, usize::MAX, None);
    let c = TcpStream::connect(busy.addr()).unwrap();
    let (status, head, body) = roundtrip(&c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", b"");
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, &envelope["errors"][0]["code"]),
        (429, &"TOOMANYREQUESTS".into())
    );
    let c = TcpStream::connect(busy.addr()).unwrap();
    let (status, _, _) = roundtrip(
        &c,
        "HEAD /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    );
    assert_eq!(status, 429);
    assert!(closed(&c), "and nothing after the head");
    assert_eq!((busy.requests(), busy.injected()), (2, 2));
    // nothing reached the server
    assert!(seen.recv_timeout(Duration::from_millis(200)).is_err());
}

/// The bytes a canned server's body holds: `n` of a pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// An HTTP/1.1 server on 127.0.0.1 answering by the target's first component, each body
/// [`pattern`]: `/len/` 300 bytes with Content-Length (kept alive), `/short/` 50 bytes,
/// `/missing/` a 404 with 300 bytes, `/chunked/` 300 bytes in five 60-byte chunks, `/close/`
/// 300 bytes delimited by closing the connection (both then close). No body to a HEAD.
fn canned_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(c) = c else { return };
            std::thread::spawn(move || {
                let mut requests = Requests::new(&c);
                while let Ok(Some(head)) = requests.head() {
                    let req = Head::parse(&head).expect("an HTTP request");
                    let with_body = |status: &str, n: usize| {
                        let mut r = format!("HTTP/1.1 {status}\r\nContent-Length: {n}\r\n\r\n")
                            .into_bytes();
                        if req.method != "HEAD" {
                            r.extend(pattern(n));
                        }
                        r
                    };
                    let (answer, last) = match req.target.split('/').nth(1).unwrap_or("") {
                        "len" => (with_body("200 OK", 300), false),
                        "short" => (with_body("200 OK", 50), false),
                        "missing" => (with_body("404 Not Found", 300), false),
                        "chunked" => {
                            let mut r =
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                            for part in pattern(300).chunks(60) {
                                r.extend(format!("{:x}\r\n", part.len()).into_bytes());
                                r.extend(part);
                                r.extend(b"\r\n");
                            }
                            r.extend(b"0\r\n\r\n");
                            (r, true)
                        }
                        _ => {
                            let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                            r.extend(pattern(300));
                            (r, true)
                        }
                    };
                    if (&c).write_all(&answer).is_err() || last {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `GET target` on a new connection to `addr` and reads the answer to the end of the
/// connection: its head and its raw body (framing included).
fn get_to_close(addr: &str, target: &str) -> (String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let end = find(&all, b"\r\n\r\n").expect("a head") + 4;
    let body = all.split_off(end);
    (String::from_utf8(all).unwrap(), body)
}

#[test]
fn fault_proxy_corrupts_one_body_byte_of_matching_responses() {
    let target = canned_server();
    let proxy = FaultProxy::start_corrupting(&target, "/blobs/sha256:", 100);
    let addr = proxy.addr();
    let flipped = |mut body: Vec<u8>| {
        body[100] ^= 0xff;
        body
    };

    // one kept-alive connection: responses pair with their requests, a HEAD's has no body
    let c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, head, body) = roundtrip(&c, &get("/len/v2/a/blobs/sha256:01"), b"");
    assert_eq!(status, 200);
    assert!(head.contains("\r\nContent-Length: 300\r\n"), "{head}");
    assert_eq!(
        body,
        flipped(pattern(300)),
        "one byte flipped, the length kept"
    );
    let (status, _, body) = roundtrip(
        &c,
        "HEAD /len/v2/a/blobs/sha256:01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    );
    assert_eq!((status, body), (200, Vec::new()));
    let (_, _, body) = roundtrip(&c, &get("/len/v2/a/manifests/t"), b"");
    assert_eq!(body, pattern(300), "another target passes unchanged");
    let (_, _, body) = roundtrip(&c, &get("/short/v2/a/blobs/sha256:02"), b"");
    assert_eq!(
        body,
        pattern(50),
        "a body too short for the offset passes unchanged"
    );
    let (status, _, body) = roundtrip(&c, &get("/missing/v2/a/blobs/sha256:03"), b"");
    assert_eq!(
        (status, body),
        (404, pattern(300)),
        "an error answer is not altered"
    );
    let (_, _, body) = roundtrip(&c, &get("/len/v2/a/blobs/sha256:04"), b"");
    assert_eq!(body, flipped(pattern(300)));

    // chunked: the payload's byte at the offset, the framing untouched
    let (head, body) = get_to_close(&addr, "/chunked/v2/a/blobs/sha256:05");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let mut expect = Vec::new();
    for part in flipped(pattern(300)).chunks(60) {
        expect.extend(format!("{:x}\r\n", part.len()).into_bytes());
        expect.extend(part);
        expect.extend(b"\r\n");
    }
    expect.extend(b"0\r\n\r\n");
    assert_eq!(body, expect);
    // delimited by the end of the connection
    let (_, body) = get_to_close(&addr, "/close/v2/a/blobs/sha256:06");
    assert_eq!(body, flipped(pattern(300)));

    assert_eq!(
        proxy.corrupted(),
        [
            "GET /len/v2/a/blobs/sha256:01 HTTP/1.1",
            "GET /len/v2/a/blobs/sha256:04 HTTP/1.1",
            "GET /chunked/v2/a/blobs/sha256:05 HTTP/1.1",
            "GET /close/v2/a/blobs/sha256:06 HTTP/1.1",
        ]
    );
    assert_eq!((proxy.requests(), proxy.accepted()), (8, 3));
}

/// `convert --source SOURCE --target TARGET --plain-http --push-retry-count RETRIES
/// --push-retry-delay 20ms --work-dir WORK EXTRA...`
fn convert_args(
    source: &str,
    target: &str,
    work: &std::path::Path,
    retries: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "convert",
        "--source",
        source,
        "--target",
        target,
        "--plain-http",
        "--push-retry-count",
        retries,
        "--push-retry-delay",
        "20ms",
        "--work-dir",
        work.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A registry holding `img:t`, a one-layer image (256 KiB of data).
fn registry_with_image(w: &std::path::Path) -> crate::registry::Registry {
    let reg = crate::registry::Registry::start();
    let (layout, _) = crate::registry::small_layout(&w.join("img"), "t", 256 << 10);
    reg.push_oci_layout(&layout, "img:t");
    reg
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn convert_retries_503_on_source_blobs_with_backoff() {
    use crate::common::*;
    let w = scratch();
    let reg = registry_with_image(w.path());
    let proxy = FaultProxy::start_answering(&reg.addr(), 503, 3, Some("/blobs/"));
    let work = w.path().join("work");
    let report = w.path().join("out.json");
    let args = convert_args(
        &format!("{}/img:t", proxy.addr()),
        &reg.reference("img:nydus"),
        &work,
        "5",
        &["-J", s(&report)],
    );
    let out = forge(&strs(&args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(proxy.injected(), 3, "{err}");
    // the answers went to blob GETs only (the ping and the manifest passed), and each was
    // retried after a wait doubling from 20 ms
    let injections = proxy.injections();
    assert!(
        injections
            .iter()
            .all(|(_, l)| l.starts_with("GET /v2/img/blobs/sha256:")),
        "{injections:?}"
    );
    assert!(proxy.requests() > 3, "the retries got through");
    let mut per_blob: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for (at, line) in &injections {
        per_blob.entry(line).or_default().push(*at);
    }
    for (line, times) in &per_blob {
        for (i, pair) in times.windows(2).enumerate() {
            let wait = Duration::from_millis(20 << i);
            assert!(
                pair[1] - pair[0] >= wait,
                "{line}: try {} came {:?} after the one before, under {wait:?}",
                i + 2,
                pair[1] - pair[0]
            );
        }
    }
    // each retry is a warning naming the proxy and the answer
    let warnings = err
        .lines()
        .filter(|l| l.contains(&proxy.addr()) && l.contains("HTTP 503"))
        .count();
    assert_eq!(warnings, 3, "{err}");
    // the target is complete: skopeo reads it, and it is what a direct conversion writes
    reg.inspect("img:nydus");
    let digest = |p: &std::path::Path| {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        r["target_digest"].as_str().unwrap().to_string()
    };
    let direct = w.path().join("direct.json");
    let args = convert_args(
        &reg.reference("img:t"),
        &reg.reference("img:direct"),
        &work,
        "0",
        &["-J", s(&direct)],
    );
    forge(&strs(&args));
    assert_eq!(digest(&report), digest(&direct));
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn convert_retries_429_on_target_uploads() {
    use crate::common::*;
    let w = scratch();
    let reg = registry_with_image(w.path());
    // in front of the target: the converted blobs go up through it, to the same registry
    let proxy = FaultProxy::start_answering(&reg.addr(), 429, 3, Some("/blobs/uploads/"));
    let work = w.path().join("work");
    let args = convert_args(
        &reg.reference("img:t"),
        &format!("{}/img:nydus", proxy.addr()),
        &work,
        "5",
        &[],
    );
    let out = forge(&strs(&args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(proxy.injected(), 3, "{err}");
    let injections = proxy.injections();
    assert!(
        injections
            .iter()
            .all(|(_, l)| (l.starts_with("POST ") || l.starts_with("PUT "))
                && l.contains(" /v2/img/blobs/uploads/")),
        "{injections:?}"
    );
    let warnings = err
        .lines()
        .filter(|l| l.contains(&proxy.addr()) && l.contains("HTTP 429"))
        .count();
    assert_eq!(warnings, 3, "{err}");
    // every blob of the target arrived, and skopeo reads it from the registry itself
    let manifest = reg.inspect_raw("img:nydus");
    let blobs = manifest["layers"].as_array().unwrap().len() + 1;
    assert!(reg.blob_puts() >= blobs, "{:#?}", reg.requests());
    assert_eq!(reg.inspect("img:nydus")["Architecture"], "amd64");
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn convert_reports_exhausted_retries_in_one_line() {
    use crate::common::*;
    let w = scratch();
    let reg = registry_with_image(w.path());
    let work = w.path().join("work");
    let one_error = |err: &str, proxy: &FaultProxy, what: &str| {
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(
            errors[0].contains(&proxy.addr())
                && errors[0].contains("HTTP 503")
                && errors[0].contains(what),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };

    // every blob GET of the source answered 503, no retry: one try, one line
    let source = FaultProxy::start_answering(&reg.addr(), 503, usize::MAX, Some("/blobs/"));
    let args = convert_args(
        &format!("{}/img:t", source.addr()),
        &reg.reference("img:never"),
        &work,
        "0",
        &[],
    );
    let err = forge_fails(&strs(&args));
    one_error(&err, &source, "get blob sha256:");
    assert!(!err.contains("(try 2 of"), "no retry: {err}");
    assert!(source.injected() >= 1);
    let out = reg.client().inspect("img:never", true);
    assert!(!out.status.success(), "the tag must not exist");

    // every upload to the target answered 503, one retry: both tries fail, one line
    let target = FaultProxy::start_answering(&reg.addr(), 503, usize::MAX, Some("/blobs/uploads/"));
    let args = convert_args(
        &reg.reference("img:t"),
        &format!("{}/img:never2", target.addr()),
        &work,
        "1",
        &[],
    );
    let err = forge_fails(&strs(&args));
    one_error(&err, &target, "upload blob sha256:");
    assert!(err.contains("(try 2 of 2)"), "the retry is logged: {err}");
    assert!(target.injected() >= 2);
    let out = reg.client().inspect("img:never2", true);
    assert!(!out.status.success(), "the tag must not exist");
    assert_eq!(
        reg.manifest_puts(),
        1,
        "only the source's manifest was ever stored"
    );
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn convert_refuses_a_layer_whose_digest_is_wrong() {
    use crate::common::*;
    let w = scratch();
    let reg = crate::registry::Registry::start();
    let (layout, layer) = crate::registry::small_layout(&w.path().join("img"), "t", 64 << 10);
    reg.push_oci_layout(&layout, "img:t");
    let work = w.path().join("work");
    // one byte of the layer's body flipped: in the gzip header's MTIME (offset 4: still a valid
    // gzip stream of the same tar; only the digest tells), or in its deflate data (offset 100,
    // which the gzip trailer's CRC catches too: the digest must still be what is blamed)
    for at in [4, 100] {
        // only the layer's GETs: the config (another blob) passes unchanged
        let proxy = FaultProxy::start_corrupting(&reg.addr(), &format!("/blobs/{layer}"), at);
        let before = reg.requests().len();
        let args = convert_args(
            &format!("{}/img:t", proxy.addr()),
            &reg.reference("img:nydus"),
            &work,
            "0",
            &[],
        );
        let out = run_with_stdin(&strs(&args), b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "byte {at} flipped: convert succeeded:\n{err}"
        );
        let corrupted = proxy.corrupted();
        assert!(
            !corrupted.is_empty(),
            "byte {at}: the layer was not read: {err}"
        );
        assert!(
            corrupted
                .iter()
                .all(|l| l.starts_with(&format!("GET /v2/img/blobs/{layer} "))),
            "{corrupted:?}"
        );
        // one line naming the layer and what is wrong with it
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "byte {at}: {err}");
        assert!(
            errors[0].contains(&layer) || errors[0].contains("layer 0"),
            "byte {at}: the layer is named: {err}"
        );
        // "digest ... mismatch", or "sha256 is <got>, its descriptor says <hex>"
        let lower = errors[0].to_lowercase();
        let says = format!("descriptor says {}", &layer["sha256:".len()..]);
        assert!(
            lower.contains("digest") || lower.contains("mismatch") || lower.contains(&says),
            "byte {at}: the digest is blamed: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // nothing of the target exists: no tag, and no upload was even begun
        let out = reg.client().inspect("img:nydus", true);
        assert!(!out.status.success(), "byte {at}: the tag must not exist");
        let requests = reg.requests();
        let writes: Vec<_> = requests[before..]
            .iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .collect();
        assert!(
            writes.is_empty(),
            "byte {at}: convert wrote to the registry: {writes:#?}"
        );
    }
}
