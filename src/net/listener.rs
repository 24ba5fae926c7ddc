//! The listening sockets, with accept queues deep enough for a reconnect storm.
//!
//! A connection the kernel completes while the accept queue is full is dropped, and the client's
//! TCP tries again 1, 3, 7, 15 and 31 s later. tokio's `TcpListener::bind` asks for a queue of
//! 1,024: a storm of 19,000 reconnections overflowed it 45,000 times, and the last collectors came
//! back after 29 s with the server idle.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::info;

/// What the listeners ask for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;

/// Below this, a fleet reconnecting at once waits on SYN retries.
const SOMAXCONN_ADVISED: u32 = 16_384;

const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// One address, bound by one socket or by several sharing it (`SO_REUSEPORT`). Each socket has an
/// accept queue of its own, as deep as `somaxconn` allows, and the kernel spreads new connections
/// over them by their addresses: four sockets hold about four times the connections completed
/// while the server is busy (each queue overflows on its own), where the sysctl cannot be raised
/// (ADR 0085).
pub struct Listeners {
    sockets: Vec<TcpListener>,
    /// Where the next accept starts looking, so that no queue waits behind a busier one.
    next: usize,
}

/// Whether this system lets sockets share a port (tokio offers `SO_REUSEPORT` only there);
/// elsewhere the address gets one socket whatever is asked.
const SHARES_PORTS: bool = cfg!(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin"
    ))
));

impl Listeners {
    /// Binds `addr` with `queues` sockets (at least one), each with a [`BACKLOG`]-deep accept
    /// queue. Port 0 picks a free port, which the other sockets then share.
    pub fn bind(addr: SocketAddr, queues: usize) -> io::Result<Self> {
        let shared = SHARES_PORTS && queues > 1;
        if shared && addr.port() != 0 {
            // Sockets that share a port also join any other process's group on it (of the same
            // user): a second server started on this address would take a share of the
            // collectors instead of failing. A socket that does not share it fails there.
            drop(probe(addr)?);
        }
        let first = bind_one(addr, shared)?;
        let addr = first.local_addr()?;
        let count = if shared { queues } else { 1 };
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(bind_one(addr, true)?);
        }
        Ok(Self { sockets, next: 0 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    /// How many accept queues the address has.
    pub fn queues(&self) -> usize {
        self.sockets.len()
    }

    /// The next connection on any of the sockets.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let n = self.sockets.len();
        for i in 0..n {
            let k = (self.next + i) % n;
            // Every socket polled registers the task, so a connection on any of them wakes it.
            if let Poll::Ready(accepted) = self.sockets[k].poll_accept(cx) {
                self.next = (k + 1) % n;
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    }
}

/// One socket on `addr` with a [`BACKLOG`]-deep accept queue (`SO_REUSEADDR`, as
/// `TcpListener::bind`; `SO_REUSEPORT` when it shares the address).
fn bind_one(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    if shared {
        share_port(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A socket bound to `addr` alone, never listening: it fails where any socket listens on the
/// address, including a group that shares it.
fn probe(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = socket_for(addr)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A TCP socket of `addr`'s family with `SO_REUSEADDR`, so a restart binds past the last run's
/// closed connections.
fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
fn share_port(socket: &TcpSocket) -> io::Result<()> {
    socket.set_reuseport(true)
}

/// Never called: [`SHARES_PORTS`] is false here.
#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
fn share_port(_: &TcpSocket) -> io::Result<()> {
    Ok(())
}

/// The accept queue the kernel will really give, from `somaxconn`'s text.
fn granted(somaxconn: &str) -> Option<u32> {
    somaxconn
        .trim()
        .parse::<u32>()
        .ok()
        .map(|cap| cap.min(BACKLOG))
}

/// Logs the accept queue each listening socket gets, and how many the OpAMP address has; below
/// [`SOMAXCONN_ADVISED`] in all, with how to raise it (a warning would greet every small
/// deployment on Linux's default of 4,096).
pub fn log_backlog(opamp_queues: usize) {
    let Some(queue) = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .as_deref()
        .and_then(granted)
    else {
        return;
    };
    let in_all = usize::try_from(queue)
        .unwrap_or(usize::MAX)
        .saturating_mul(opamp_queues);
    if in_all < SOMAXCONN_ADVISED as usize {
        info!(
            accept_queue = queue,
            opamp_accept_queues = opamp_queues,
            "listeners' accept queue, capped by net.core.somaxconn: collectors reconnecting at \
             once beyond it wait for TCP retries (1, 3, 7 s…); for large fleets raise it (sysctl \
             net.core.somaxconn=65535, or the container's --sysctl) or opamp.accept_queues"
        );
    } else {
        info!(
            accept_queue = queue,
            opamp_accept_queues = opamp_queues,
            "listeners' accept queue"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cap_or_ours_whichever_is_lower() {
        assert_eq!(granted("4096\n"), Some(4096));
        assert_eq!(granted("200000"), Some(BACKLOG));
        assert_eq!(granted("many"), None);
    }

    #[tokio::test]
    async fn a_bound_listener_accepts() {
        let mut listener =
            Listeners::bind("127.0.0.1:0".parse().expect("an address"), 1).expect("binds");
        let addr = listener.local_addr().expect("an address");
        let (accepted, connected) =
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        assert!(accepted.is_ok() && connected.is_ok());
    }

    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

    /// The kernel spreads connections over the queues by their addresses: with 64, every queue
    /// holds some (all on one: a chance of 2 in 2^64). Each must be accepted, whichever socket
    /// holds it.
    #[tokio::test]
    async fn connections_on_every_queue_are_accepted() {
        let mut listener =
            Listeners::bind("127.0.0.1:0".parse().expect("an address"), 2).expect("binds");
        assert_eq!(listener.queues(), 2);
        let addr = listener.local_addr().expect("an address");
        assert_eq!(listener.sockets[1].local_addr().expect("an address"), addr);
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("connects"),
            );
        }
        // Each socket's own queue has some.
        for socket in &listener.sockets {
            let accepted = tokio::time::timeout(DEADLINE, socket.accept());
            held.push(
                accepted
                    .await
                    .expect("this queue holds some")
                    .expect("accepts")
                    .0,
            );
        }
        for _ in 2..64 {
            let accepted = tokio::time::timeout(DEADLINE, listener.accept());
            held.push(accepted.await.expect("in time").expect("accepts").0);
        }
        // Nothing was left behind on either.
        for socket in &listener.sockets {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(socket.poll_accept(&mut cx).is_pending());
        }
    }

    /// An accept already waiting is woken by a connection on any queue: sixteen connections,
    /// each made while the accept waits, land on both sockets (all on one: 2 in 2^16).
    #[tokio::test]
    async fn a_waiting_accept_is_woken_by_any_queue() {
        let mut listener =
            Listeners::bind("127.0.0.1:0".parse().expect("an address"), 2).expect("binds");
        let addr = listener.local_addr().expect("an address");
        for _ in 0..16 {
            let (accepted, connected) = tokio::join!(
                tokio::time::timeout(DEADLINE, listener.accept()),
                tokio::net::TcpStream::connect(addr)
            );
            assert!(accepted.expect("woken in time").is_ok() && connected.is_ok());
        }
    }

    /// Sharing a port must not let a second server join the first: it is refused, as a server
    /// with one socket would be, and binds once the first has gone.
    #[tokio::test]
    async fn a_second_server_on_the_address_is_refused() {
        let first = Listeners::bind("127.0.0.1:0".parse().expect("an address"), 4).expect("binds");
        let addr = first.local_addr().expect("an address");
        for queues in [4, 1] {
            let second = Listeners::bind(addr, queues);
            assert_eq!(
                second.err().map(|e| e.kind()),
                Some(io::ErrorKind::AddrInUse),
                "{queues} queues"
            );
        }
        drop(first);
        let again = Listeners::bind(addr, 4).expect("binds once the first has gone");
        assert_eq!(again.queues(), 4);
    }

    /// Port 0 is a port of this listener's own: another listener bound to port 0 gets another.
    #[test]
    fn shared_sockets_on_port_0_get_ports_of_their_own() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime");
        let _entered = runtime.enter();
        let listeners: Vec<Listeners> = (0..32)
            .map(|_| Listeners::bind("127.0.0.1:0".parse().expect("an address"), 2).expect("binds"))
            .collect();
        let mut ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("an address").port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 32);
    }
}
