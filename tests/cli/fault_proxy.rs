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

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// `cut_after` as stored: no limit.
const NEVER: u64 = u64::MAX;

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
    // every connection, to shut down on drop (weak: a finished one closes its sockets)
    conns: Mutex<Vec<Weak<Conn>>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
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
        pumps.push(std::thread::spawn(move || pump(&conn, upstream, &sh)));
    }
}

/// Copies one direction (client → server when `upstream`) until EOF, an error or the cut.
fn pump(conn: &Conn, upstream: bool, shared: &Shared) {
    let (mut from, mut to) = if upstream {
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
            Ok(n) => n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.shutdown();
                return;
            }
        };
        let limit = shared.cut_after.load(Ordering::SeqCst);
        let before = conn.crossed.fetch_add(n, Ordering::SeqCst);
        let allowed = if limit == NEVER {
            n
        } else {
            limit.saturating_sub(before).min(n)
        };
        if allowed > 0 {
            if to.write_all(&buf[..allowed as usize]).is_err() {
                conn.shutdown();
                return;
            }
            shared.forwarded.fetch_add(allowed, Ordering::SeqCst);
        }
        if limit != NEVER && before + n >= limit {
            cut(conn, shared);
            return;
        }
    }
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
