//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG) for connected IPv4
//! UDP sockets of the agent's network namespace: listing them with their
//! cookies (the same cookie the socket hooks key `sock_lb` by), and
//! aborting one (SOCK_DESTROY, what `ss -K` does; needs CAP_NET_ADMIN and
//! CONFIG_INET_DIAG_DESTROY). An aborted UDP socket is disconnected and its
//! owner's next send or receive fails with ECONNABORTED.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to the end of its id.
const MSG_ID_END: usize = 4 + SOCKID_LEN;
/// TCP_ESTABLISHED: what a connected UDP socket reports as its state.
const UDP_CONNECTED_STATE: u32 = 1;

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("netlink socket diagnostics: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel cannot abort sockets (CONFIG_INET_DIAG_DESTROY off)")]
    DestroyUnsupported,
    #[error("truncated netlink message")]
    Truncated,
}

/// A connected UDP socket, as the kernel identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocketId {
    /// `struct inet_diag_sockid` as the dump gave it, replayed to destroy.
    raw: [u8; SOCKID_LEN],
}

impl UdpSocketId {
    pub fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes(self.raw[40..44].try_into().unwrap_or_default());
        let hi = u32::from_ne_bytes(self.raw[44..48].try_into().unwrap_or_default());
        (hi as u64) << 32 | lo as u64
    }

    /// The address it is connected to.
    pub fn peer(&self) -> (Ipv4Addr, u16) {
        let port = u16::from_be_bytes([self.raw[2], self.raw[3]]);
        let ip = Ipv4Addr::new(self.raw[20], self.raw[21], self.raw[22], self.raw[23]);
        (ip, port)
    }
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn request(kind: u16, flags: u16, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    msg.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_UDP as u8, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(id);
    msg
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: msg is a valid buffer of msg.len() bytes.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One netlink message: (type, payload).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), SockDiagError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(SockDiagError::Truncated));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        let next = ((len + 3) & !3).min(buf.len());
        buf = &buf[next..];
        Some(Ok((kind, payload)))
    })
}

/// The error code of an NLMSG_ERROR payload (0: an acknowledgment).
fn error_code(payload: &[u8]) -> Result<i32, SockDiagError> {
    let code = payload.get(0..4).ok_or(SockDiagError::Truncated)?;
    Ok(i32::from_ne_bytes(
        code.try_into().map_err(|_| SockDiagError::Truncated)?,
    ))
}

/// Every connected IPv4 UDP socket of this network namespace.
pub fn connected_udp_sockets() -> Result<Vec<UdpSocketId>, SockDiagError> {
    let fd = netlink_socket()?;
    send(
        &fd,
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_DUMP,
            1 << UDP_CONNECTED_STATE,
            &[0; SOCKID_LEN],
        ),
    )?;
    let mut sockets = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(&fd, &mut buf)?;
        for message in messages(&buf[..n]) {
            let (kind, payload) = message?;
            match kind {
                NLMSG_DONE => return Ok(sockets),
                NLMSG_ERROR => {
                    return Err(io::Error::from_raw_os_error(-error_code(payload)?).into());
                }
                SOCK_DIAG_BY_FAMILY => {
                    let id = payload.get(4..MSG_ID_END).ok_or(SockDiagError::Truncated)?;
                    let mut raw = [0u8; SOCKID_LEN];
                    raw.copy_from_slice(id);
                    sockets.push(UdpSocketId { raw });
                }
                _ => {}
            }
        }
    }
}

/// Aborts `socket`. A socket closed meanwhile is not an error.
pub fn abort(socket: &UdpSocketId) -> Result<(), SockDiagError> {
    let fd = netlink_socket()?;
    send(
        &fd,
        &request(SOCK_DESTROY, NLM_F_ACK, u32::MAX, &socket.raw),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(&fd, &mut buf)?;
    for message in messages(&buf[..n]) {
        let (kind, payload) = message?;
        if kind != NLMSG_ERROR {
            continue;
        }
        return match -error_code(payload)? {
            0 | libc::ENOENT => Ok(()),
            libc::EOPNOTSUPP => Err(SockDiagError::DestroyUnsupported),
            errno => Err(io::Error::from_raw_os_error(errno).into()),
        };
    }
    Err(SockDiagError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_aborts_a_connected_socket_of_this_process() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect("127.0.0.1:9").expect("connect");
        let local = socket.local_addr().expect("local").port();
        let found = connected_udp_sockets()
            .expect("dump")
            .into_iter()
            .find(|s| {
                u16::from_be_bytes([s.raw[0], s.raw[1]]) == local
                    && s.peer() == (Ipv4Addr::LOCALHOST, 9)
            })
            .expect("our socket in the dump");
        assert_ne!(found.cookie(), 0);
        abort(&found).expect("abort");
        let err = socket.send(b"x").expect_err("aborted");
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::ECONNABORTED) | Some(libc::EDESTADDRREQ)
            ),
            "{err}"
        );
    }
}
