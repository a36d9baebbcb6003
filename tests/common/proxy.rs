//! A TCP proxy a test controls, to break the way to a backend (PostgreSQL, Redis) without
//! touching the backend itself: the machine's shared servers keep running for everyone else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards bytes both ways.
    Open,
    /// Closes every connection, and every new one at once.
    Cut,
    /// Closes every connection; new ones are accepted and then never answered (a backend that
    /// hangs, for timeouts).
    Blackhole,
}

/// A proxy on 127.0.0.1 and a free port, forwarding to `upstream` until told otherwise.
/// Dropping it stops it and closes its connections.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, watching) = watch::channel(Mode::Open);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            watching,
            connections.clone(),
        ));
        Self {
            addr,
            mode,
            accept,
            connections,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// Drops every open connection, and holds new ones open without ever answering.
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.set(Mode::Open);
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode != Mode::Open {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let task = match *mode.borrow() {
            Mode::Cut => {
                drop(client);
                continue;
            }
            Mode::Blackhole => tokio::spawn(async move {
                let _held = client;
                std::future::pending::<()>().await;
            }),
            Mode::Open => tokio::spawn(forward(client, upstream)),
        };
        let mut open = connections.lock().unwrap();
        open.retain(|t| !t.is_finished());
        open.push(task);
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
