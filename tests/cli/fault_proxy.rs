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

struct Conn {
    client: TcpStream,
    server: TcpStream,
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
        launch(target, cut_after, None)
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
        launch(target, None, Some(answer))
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

    /// Answering mode: the HTTP requests received so far (answered here or forwarded).
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
}

fn launch(target: &str, cut_after: Option<u64>, answer: Option<Answer>) -> FaultProxy {
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
            if upstream && sh.answer.is_some() {
                http_pump(&conn, &sh)
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

/// The answering mode's client → server direction: request by request, each forwarded (head
/// and body) or answered here, until EOF, an error, the cut or an answer given.
fn http_pump(conn: &Conn, shared: &Shared) {
    let answer = shared.answer.as_ref().expect("the answering mode");
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
        if answer.takes(&req.target) {
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
        let forwarded = pass(conn, &conn.server, &head, shared)
            && from.body(req.body, &mut |b| pass(conn, &conn.server, b, shared));
        if !forwarded {
            conn.shutdown();
            return;
        }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
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
        let (mut length, mut chunked) = (None, false);
        for field in lines {
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
        match body {
            Body::None => true,
            Body::Length(n) => self.take(n, sink),
            Body::Chunked => loop {
                let Ok(line) = self.line() else { return false };
                if !sink(&line) {
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
                        if !sink(&line) {
                            return false;
                        }
                        if line == b"\r\n" {
                            return true;
                        }
                    }
                }
                // the data and its CRLF
                if !self.take(size + 2, sink) {
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
