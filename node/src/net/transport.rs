//! The TCP transport, with the kernel's retransmission backoff capped on every connection.
//!
//! A connection that loses packets for a while (a partition, a link that flaps, a peer
//! paused for a moment) backs off exponentially between retransmissions: 200 ms, 400, 800,
//! 1.6 s, 3.2 s, … up to Linux's default cap of 120 s. When the path comes back, nothing
//! moves on that connection until the next retransmission fires: after a 4 s cut, about
//! 2 s later, after a 10 s cut about 6 s later, whatever gossip or sync queued behind it.
//! The chaos harness measured this after group partitions over WAN links (issue 15:
//! records written right after a heal took up to 1.3 s to reach the other side, heals up to
//! 6 s to converge), and nothing above TCP can shorten it: the failure detector's probes
//! wait on the same connection.
//!
//! Linux 6.15 added a per-socket cap, `TCP_RTO_MAX_MS` (1 s at least). Every connection the
//! node makes or accepts gets [`RETRANSMIT_BACKOFF_CAP_MS`]: after any outage the connection
//! retransmits within a second of the path coming back. The cost is a retransmission a
//! second, instead of ever fewer, toward a peer that is really gone, until the kernel gives
//! up on it (which then happens sooner: its give-up time is computed from the cap) or the
//! node closes the connection. On an older kernel the option does not exist: the
//! connection keeps the system's backoff and is counted
//! (`dpin_net_tcp_backoff_cap_total{result="unsupported"}`); nothing else changes. The system-wide sysctl
//! `net.ipv4.tcp_rto_max_ms` sets the same cap for every socket of a network namespace.
//!
//! A dial's SYNs are not capped: the option is set once the connection exists, since
//! libp2p-tcp opens and connects the socket itself. Measured (stop 38) on this kernel, this
//! costs little: Linux retransmits the first four SYNs one second apart
//! (`net.ipv4.tcp_syn_linear_timeouts`, default 4) before it backs off, a re-dial starts a
//! fresh dial rather than waiting on an old one (`connections::Redial`), and a dial that has not
//! connected within `DIAL_SLOT_HOLD` no longer holds a slot of the target degree. A dialer
//! of the node's own, to set the cap before `connect()`, would only shorten dials that have
//! hung for more than 4 s.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libp2p::core::{muxing::StreamMuxerBox, transport::Boxed, upgrade, Transport};
use libp2p::{noise, tcp, yamux, PeerId};

/// The cap on the retransmission timeout of the node's TCP connections, ms (the kernel's
/// minimum for the option is 1,000).
pub const RETRANSMIT_BACKOFF_CAP_MS: u32 = 1_000;

/// `TCP_RTO_MAX_MS` from `<linux/tcp.h>` (Linux 6.15+); the libc crate does not name it yet.
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// TCP connections (made or accepted) whose backoff was capped, and those on which the cap
/// could not be set (the kernel does not know the option).
#[derive(Debug, Default)]
pub(super) struct Backoff {
    pub(super) capped: AtomicU64,
    pub(super) uncapped: AtomicU64,
}

/// Caps the retransmission backoff of `socket` at `cap_ms`.
#[allow(unsafe_code)]
pub fn cap_retransmit_backoff(socket: &impl AsRawFd, cap_ms: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(cap_ms)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is a live socket borrowed for the call, and the option value is
    // a c_int that lives across it, with its size passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// TCP with noise and yamux, as libp2p's `with_tcp` builds it, with the backoff cap set on
/// each connection before its upgrade (inbound and outbound alike).
pub(super) fn transport(
    key: &libp2p::identity::Keypair,
    config: tcp::Config,
    backoff: Arc<Backoff>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    Ok(tcp::tokio::Transport::new(config)
        .map(move |stream: tcp::tokio::TcpStream, _| {
            match cap_retransmit_backoff(&stream.0, RETRANSMIT_BACKOFF_CAP_MS) {
                Ok(()) => {
                    backoff.capped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if backoff.uncapped.fetch_add(1, Ordering::Relaxed) == 0 => {
                    tracing::info!(%e, "cannot cap TCP retransmission backoff (TCP_RTO_MAX_MS needs Linux 6.15); connections keep the system's backoff");
                }
                Err(_) => {}
            }
            stream
        })
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn rto_max_ms(socket: &impl AsRawFd) -> std::io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in `cap_retransmit_backoff`, with a writable value and its length.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_RTO_MAX_MS,
                std::ptr::addr_of_mut!(value).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The option is a kernel feature; on a kernel without it the cap is refused (and the
    /// transport counts the connection as uncapped), so the test checks what it can.
    #[test]
    fn a_socket_gets_the_retransmission_backoff_cap() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        match cap_retransmit_backoff(&socket, RETRANSMIT_BACKOFF_CAP_MS) {
            Ok(()) => assert_eq!(rto_max_ms(&socket).unwrap(), 1_000),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}"),
        }
    }

    #[tokio::test]
    async fn the_node_transport_caps_the_backoff_of_each_connection_it_makes_or_accepts() {
        use futures::StreamExt;
        use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
        use libp2p::core::Endpoint;

        let supported = cap_retransmit_backoff(
            &std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            RETRANSMIT_BACKOFF_CAP_MS,
        )
        .is_ok();
        let backoff = Arc::new(Backoff::default());
        let a = libp2p::identity::Keypair::generate_ed25519();
        let b = libp2p::identity::Keypair::generate_ed25519();
        let mut listener = transport(&a, tcp::Config::default(), backoff.clone()).unwrap();
        listener
            .listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let TransportEvent::NewAddress { listen_addr, .. } =
                listener.select_next_some().await
            {
                break listen_addr;
            }
        };
        let mut dialer = transport(&b, tcp::Config::default(), backoff.clone()).unwrap();
        let dial = dialer
            .dial(
                addr,
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .unwrap();
        // The listener's side of the upgrade waits for the dialer's first stream (lazy
        // multistream-select), so it is driven only while the dial completes: by then the
        // listener has answered the noise handshake, so its connection went through the map.
        let accept = async {
            loop {
                if let TransportEvent::Incoming { upgrade, .. } = listener.select_next_some().await
                {
                    let _ = upgrade.await;
                    return;
                }
            }
        };
        tokio::pin!(accept);
        let dialed = tokio::select! {
            d = dial => d,
            () = &mut accept => panic!("the listener finished its upgrade before the dialer"),
        };
        assert_eq!(dialed.unwrap().0, a.public().to_peer_id());
        let (capped, uncapped) = (
            backoff.capped.load(Ordering::Relaxed),
            backoff.uncapped.load(Ordering::Relaxed),
        );
        // Both ends of the connection went through the cap.
        assert_eq!((capped, uncapped), if supported { (2, 0) } else { (0, 2) });
    }
}
