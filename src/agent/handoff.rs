//! Connections the service proxy hands straight to an HTTP server of this node's Wasm pods.
//!
//! A Wasm pod's HTTP server runs in the agent itself. A connection to a ClusterIP, NodePort or
//! other Service address whose chosen endpoint is such a server on this node is therefore given
//! to that server as if its listener had accepted it, instead of the proxy opening a second
//! connection to the pod's address and copying bytes both ways: the same server, the same
//! per-pod thread, limits and drain, without a second TCP hop through the kernel. Everything
//! else (Linux containers, Wasm pods listening with wasi:sockets, endpoints on other nodes)
//! is relayed as before.
//!
//! A handed-over connection stays under the proxy's control: when its endpoint leaves the
//! Service, the proxy drops its [`HandedOver`], and the server closes the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Connections that may wait for one server to take them.
const QUEUE: usize = 256;

/// This node's in-agent HTTP servers, by the pod address and port they serve.
#[derive(Default)]
pub struct LocalServers {
    servers: Mutex<HashMap<SocketAddr, (u64, mpsc::Sender<Handoff>)>>,
    next: AtomicU64,
}

/// A connection given to a server: served as one its listener accepted, and closed when `cut`
/// is cancelled. `done` is dropped when the server is finished with it.
pub struct Handoff {
    /// The client's connection, not yet registered with any runtime.
    pub stream: std::net::TcpStream,
    /// Cancelled when the proxy no longer wants the connection served.
    pub cut: CancellationToken,
    /// Dropped when the connection is over.
    pub done: oneshot::Sender<()>,
}

/// The proxy's side of a handed-over connection: dropping it closes the connection.
pub struct HandedOver {
    _cut: DropGuard,
    done: oneshot::Receiver<()>,
}

impl HandedOver {
    /// Resolves when the server is finished with the connection.
    pub async fn finished(self) {
        let Self { _cut, done } = self;
        let _ = done.await;
    }
}

/// A server's registration and the connections handed to it; it is unregistered when this is
/// dropped.
pub struct Handoffs {
    servers: Arc<LocalServers>,
    addr: SocketAddr,
    id: u64,
    queue: Option<mpsc::Receiver<Handoff>>,
}

impl Handoffs {
    /// The next connection handed over; pending for ever once there can be none.
    pub async fn next(&mut self) -> Handoff {
        if let Some(queue) = &mut self.queue
            && let Some(handoff) = queue.recv().await
        {
            return handoff;
        }
        self.queue = None;
        std::future::pending().await
    }
}

impl Drop for Handoffs {
    fn drop(&mut self) {
        let mut servers = self.servers.servers.lock().expect("local servers lock");
        if servers
            .get(&self.addr)
            .is_some_and(|(id, _)| *id == self.id)
        {
            servers.remove(&self.addr);
        }
    }
}

impl LocalServers {
    /// Registers the server of `addr` (a pod address and port); the last registration of an
    /// address takes its connections.
    pub fn register(self: &Arc<Self>, addr: SocketAddr) -> Handoffs {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        self.servers
            .lock()
            .expect("local servers lock")
            .insert(addr, (id, tx));
        Handoffs {
            servers: self.clone(),
            addr,
            id,
            queue: Some(rx),
        }
    }

    /// Gives `stream` to the server of `to`, if this node has one with room for it; otherwise
    /// gives the stream back untouched.
    ///
    /// # Errors
    /// The stream itself, when it is not handed over.
    pub fn hand(&self, to: SocketAddr, stream: TcpStream) -> Result<HandedOver, TcpStream> {
        let Some(tx) = self
            .servers
            .lock()
            .expect("local servers lock")
            .get(&to)
            .map(|(_, tx)| tx.clone())
        else {
            return Err(stream);
        };
        let Ok(permit) = tx.try_reserve() else {
            return Err(stream);
        };
        // A second descriptor of the same connection, for the server's runtime to register;
        // this runtime's one is closed with `stream`.
        let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
            return Err(stream);
        };
        drop(stream);
        let cut = CancellationToken::new();
        let (done, finished) = oneshot::channel();
        permit.send(Handoff {
            stream: std::net::TcpStream::from(fd),
            cut: cut.clone(),
            done,
        });
        Ok(HandedOver {
            _cut: cut.drop_guard(),
            done: finished,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn a_connection_goes_to_the_registered_server_and_is_cut_when_dropped() {
        let servers = Arc::new(LocalServers::default());
        let addr: SocketAddr = "100.64.0.9:8000".parse().unwrap();
        let (mut client, accepted) = pair().await;
        // Nobody serves that address: the stream comes back.
        let accepted = servers.hand(addr, accepted).err().unwrap();

        let mut handoffs = servers.register(addr);
        let handed = servers.hand(addr, accepted).ok().unwrap();
        let got = handoffs.next().await;
        let mut served = TcpStream::from_std(got.stream).unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        served.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // The proxy lets go (its endpoint left): the server is told to cut the connection.
        assert!(!got.cut.is_cancelled());
        drop(handed);
        assert!(got.cut.is_cancelled());
        drop((served, got.done));
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn finished_resolves_when_the_server_is_done_and_a_gone_server_takes_nothing() {
        let servers = Arc::new(LocalServers::default());
        let addr: SocketAddr = "100.64.0.9:8000".parse().unwrap();
        let (_client, accepted) = pair().await;
        let mut handoffs = servers.register(addr);
        let handed = servers.hand(addr, accepted).ok().unwrap();
        let got = handoffs.next().await;
        drop(got);
        tokio::time::timeout(std::time::Duration::from_secs(5), handed.finished())
            .await
            .expect("finished when the server dropped the connection");

        // A newer registration of the address keeps it when the older one goes.
        let newer = servers.register(addr);
        drop(handoffs);
        let (_client, accepted) = pair().await;
        assert!(servers.hand(addr, accepted).is_ok());
        drop(newer);
        let (_client, accepted) = pair().await;
        assert!(servers.hand(addr, accepted).is_err(), "unregistered");
    }
}
