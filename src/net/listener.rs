//! The listening sockets, with an accept queue deep enough for a reconnect storm.
//!
//! A connection the kernel completes while the accept queue is full is dropped, and the client's
//! TCP tries again 1, 3, 7, 15 and 31 s later. tokio's `TcpListener::bind` asks for a queue of
//! 1,024: a storm of 19,000 reconnections overflowed it 45,000 times, and the last collectors came
//! back after 29 s with the server idle.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

/// What the listeners ask for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;

/// Below this, a fleet reconnecting at once waits on SYN retries.
const SOMAXCONN_ADVISED: u32 = 16_384;

const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// Binds `addr` with a [`BACKLOG`]-deep accept queue (`SO_REUSEADDR`, as `TcpListener::bind`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The accept queue the kernel will really give, from `somaxconn`'s text.
fn granted(somaxconn: &str) -> Option<u32> {
    somaxconn
        .trim()
        .parse::<u32>()
        .ok()
        .map(|cap| cap.min(BACKLOG))
}

/// Logs the accept queue the listeners get; below [`SOMAXCONN_ADVISED`], with how to raise it
/// (a warning would greet every small deployment on Linux's default of 4,096).
pub fn log_backlog() {
    let Some(queue) = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .as_deref()
        .and_then(granted)
    else {
        return;
    };
    if queue < SOMAXCONN_ADVISED {
        info!(
            accept_queue = queue,
            "listeners' accept queue, capped by net.core.somaxconn: collectors reconnecting at \
             once beyond it wait for TCP retries (1, 3, 7 s…); for large fleets raise it (sysctl \
             net.core.somaxconn=65535, or the container's --sysctl)"
        );
    } else {
        info!(accept_queue = queue, "listeners' accept queue");
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
        let listener = bind("127.0.0.1:0".parse().expect("an address")).expect("binds");
        let addr = listener.local_addr().expect("an address");
        let (accepted, connected) =
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        assert!(accepted.is_ok() && connected.is_ok());
    }
}
