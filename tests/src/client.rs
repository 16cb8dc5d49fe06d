//! Clients inside pod namespaces, run from test threads: a thread enters the
//! pod's network namespace (setns affects only that thread), creates its
//! socket there and hands it back; the socket stays in the pod's namespace.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::topology::Pod;

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("setns {path}"));
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns_name = ns.to_string();
    let handle = std::thread::spawn(move || -> Result<T> {
        enter_netns(&ns_name)?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow!("client thread in {ns} panicked"))?
}

/// Whether the error is a refused connection (ECONNREFUSED), which is what a
/// service without backends must produce.
pub fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::ConnectionRefused)
    })
}

/// Sends one line on `stream` and returns the reply line, trimmed.
pub fn ask(stream: &mut TcpStream) -> Result<String> {
    stream.write_all(b"hello\n").context("sending")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    let n = reader.read_line(&mut line).context("reading reply")?;
    if n == 0 {
        bail!("connection closed by peer");
    }
    Ok(line.trim().to_string())
}

impl Pod {
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        in_netns(self.ns(), f)
    }

    /// A TCP connection from this pod, to keep open across a test.
    pub fn tcp_connect(&self, addr: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
        let stream = self
            .in_netns(move || TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }

    /// A TCP connection from local port `port` (SO_REUSEADDR, so several
    /// connections to different destinations may share it, as the kernel
    /// allows for ephemeral ports too).
    pub fn tcp_connect_from(
        &self,
        port: u16,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<TcpStream> {
        let stream: TcpStream = self.connected_from(libc::SOCK_STREAM, port, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }

    /// A UDP socket on local port `port` (SO_REUSEADDR) connected to `addr`.
    pub fn udp_connect_from(
        &self,
        port: u16,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<UdpSocket> {
        let socket: UdpSocket = self.connected_from(libc::SOCK_DGRAM, port, addr, timeout)?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(socket)
    }

    /// A socket of `kind` in this pod, bound to `port` and connected to `addr`.
    fn connected_from<S: From<OwnedFd> + Send + 'static>(
        &self,
        kind: libc::c_int,
        port: u16,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<S> {
        self.in_netns(move || -> std::io::Result<S> {
            let socket = bound_socket(kind, port, timeout)?;
            connect_fd(&socket, addr)?;
            Ok(S::from(socket))
        })?
        .with_context(|| format!("connecting from port {port} to {addr}"))
    }

    /// Connect, send a line, return the reply line: which backend answered.
    pub fn tcp_request(&self, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
        let mut stream = self.tcp_connect(addr, timeout)?;
        ask(&mut stream).with_context(|| format!("request to {addr}"))
    }

    /// One datagram on a connected socket: the kernel accepts a reply only
    /// from `addr` itself (so it checks reverse NAT) and reports an ICMP
    /// port-unreachable as ECONNREFUSED.
    pub fn udp_request(&self, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
        let reply = self.in_netns(move || -> std::io::Result<String> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(addr)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send(b"hello\n")?;
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })?;
        reply.with_context(|| format!("UDP request to {addr}"))
    }

    /// Sends `echo <payload>` in one datagram on a connected socket;
    /// returns the answer (the backend's name, a space, the payload echoed).
    /// Payloads beyond the MTU travel as IP fragments both ways.
    pub fn udp_echo(
        &self,
        addr: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let request = [b"echo ".as_slice(), payload].concat();
        let reply = self.in_netns(move || -> std::io::Result<Vec<u8>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(addr)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send(&request)?;
            let mut buf = vec![0u8; 65536];
            let n = socket.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })?;
        reply.with_context(|| format!("UDP echo of {} bytes to {addr}", payload.len()))
    }

    /// Asks the backend behind `addr` who it is and whom it saw: returns
    /// (backend name, client address as the backend saw it).
    pub fn tcp_whoami(&self, addr: SocketAddrV4, timeout: Duration) -> Result<(String, String)> {
        let mut stream = self.tcp_connect(addr, timeout)?;
        stream.write_all(b"whoami\n").context("sending")?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .context("reading reply")?;
        let (name, peer) = line
            .trim()
            .split_once(' ')
            .with_context(|| format!("unexpected whoami reply {line:?}"))?;
        Ok((name.to_string(), peer.to_string()))
    }

    /// A raw HTTP GET of `/`; returns (status code, body).
    pub fn http_get(&self, addr: SocketAddrV4, timeout: Duration) -> Result<(u16, String)> {
        self.http_get_path(addr, "/", timeout)
    }

    /// A raw HTTP GET of `path`; returns (status code, body).
    pub fn http_get_path(
        &self,
        addr: SocketAddrV4,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        let mut stream = self.tcp_connect(addr, timeout)?;
        stream.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).context("reading HTTP response")?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no HTTP status in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Like [`Pod::udp_request`] but from a fixed local port, so successive
    /// requests are the same flow (as a resolver reusing its socket is).
    pub fn udp_request_from_port(
        &self,
        local_port: u16,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<String> {
        let reply = self.in_netns(move || -> std::io::Result<String> {
            let socket = UdpSocket::bind(("0.0.0.0", local_port))?;
            socket.connect(addr)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send(b"hello\n")?;
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })?;
        reply.with_context(|| format!("UDP request to {addr} from port {local_port}"))
    }

    /// One datagram on an unconnected socket: returns the reply and the
    /// address it came from.
    pub fn udp_request_from(
        &self,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<(String, SocketAddr)> {
        let reply = self.in_netns(move || -> std::io::Result<(String, SocketAddr)> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(b"hello\n", addr)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
        })?;
        reply.with_context(|| format!("UDP request to {addr}"))
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// An IPv4 socket of `kind` with SO_REUSEADDR, bound to 0.0.0.0:`port`;
/// `timeout` bounds connect() (SO_SNDTIMEO).
fn bound_socket(kind: libc::c_int, port: u16, timeout: Duration) -> std::io::Result<OwnedFd> {
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let local = sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port));
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) == 0
            && libc::bind(
                fd,
                (&local as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn connect_fd(socket: &OwnedFd, addr: SocketAddrV4) -> std::io::Result<()> {
    let remote = sockaddr(addr);
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
