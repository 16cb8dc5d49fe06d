//! A client run as a process of a node (in its network namespace and in a
//! cgroup the agent's socket hooks watch), for the socket-LB tests:
//!
//! host-client --cgroup DIR tcp|udp|udp-sendto|udp-hold|udp-sendto-hold IP:PORT
//!
//! Joins the cgroup first, then sends `whoami` and prints
//! `reply=<answer> peer=<address the socket reports>`: for tcp and udp the
//! connected peer (getpeername), for udp-sendto the reply's source
//! (recvfrom). A refused connection prints `refused`.
//!
//! `tcp-from=SRC` connects from a socket bound to SRC with IP_TRANSPARENT (a
//! pod forging another's address) and prints `error=<errno>` if that fails.
//!
//! The `-hold` modes keep their one socket (connected, or sending with
//! sendto) and ask again on it for each line read from stdin, printing
//! `reply=… peer=…` or `error=<errno>` each time, until stdin ends:
//! a long-lived client, such as a node's DNS forwarder.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: host-client --cgroup DIR tcp|udp|udp-sendto IP:PORT");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, cgroup, mode, addr] = args.as_slice() else {
        usage()
    };
    if flag != "--cgroup" {
        usage()
    }
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        usage()
    };
    let procs = std::path::Path::new(cgroup).join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
        eprintln!("joining {}: {e}", procs.display());
        std::process::exit(1);
    }
    let timeout = Some(Duration::from_secs(2));
    if let Some(mode) = mode.strip_suffix("-hold") {
        hold(mode, addr, timeout)
    }
    if let Some(source) = mode.strip_prefix("tcp-from=") {
        let Ok(source) = source.parse() else { usage() };
        match tcp_from(source, addr) {
            Ok(()) => println!("connected"),
            Err(e) => println!("error={}", e.raw_os_error().unwrap_or(0)),
        }
        std::process::exit(0)
    }
    let outcome: std::io::Result<(String, SocketAddr)> = (|| match mode.as_str() {
        "tcp" => {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(timeout)?;
            let peer = stream.peer_addr()?;
            (&stream).write_all(b"whoami\n")?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            Ok((line.trim().to_string(), peer))
        }
        "udp" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(timeout)?;
            socket.connect(addr)?;
            let peer = socket.peer_addr()?;
            socket.send(b"whoami\n")?;
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), peer))
        }
        "udp-sendto" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(timeout)?;
            socket.send_to(b"whoami\n", addr)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
        }
        _ => usage(),
    })();
    match outcome {
        Ok((reply, peer)) => println!("reply={reply} peer={peer}"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("refused"),
        Err(e) => {
            eprintln!("{mode} {addr}: {e}");
            std::process::exit(1);
        }
    }
}

/// Connects to `addr` from `source`, which need not be this namespace's
/// (IP_TRANSPARENT), giving up after a second.
fn tcp_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let SocketAddr::V4(addr) = addr else {
        return Err(std::io::ErrorKind::Unsupported.into());
    };
    let check = |rc: i32| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned here.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0))?;
        let _owned = OwnedFd::from_raw_fd(fd);
        check(set_option(
            fd,
            libc::SOL_IP,
            libc::IP_TRANSPARENT,
            &(1 as libc::c_int),
        ))?;
        let limit = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        check(set_option(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &limit))?;
        let from = sockaddr(source, 0);
        check(libc::bind(
            fd,
            (&from as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        let to = sockaddr(*addr.ip(), addr.port());
        check(libc::connect(
            fd,
            (&to as *const libc::sockaddr_in).cast(),
            len,
        ))?;
    }
    Ok(())
}

/// setsockopt with `value` as the option's bytes.
///
/// # Safety
/// `fd` is an open socket and `T` the type the option expects.
unsafe fn set_option<T>(fd: i32, level: i32, name: i32, value: &T) -> i32 {
    let size = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: as the caller promises; `value` lives for the call.
    unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), size) }
}

/// One socket, asked again for each line on stdin.
fn hold(mode: &str, addr: SocketAddr, timeout: Option<Duration>) -> ! {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.set_read_timeout(timeout).map(|()| s))
        .unwrap_or_else(|e| {
            eprintln!("binding a UDP socket: {e}");
            std::process::exit(1)
        });
    let connected = mode == "udp";
    if connected && let Err(e) = socket.connect(addr) {
        eprintln!("connecting to {addr}: {e}");
        std::process::exit(1)
    }
    let ask = || -> std::io::Result<(String, SocketAddr)> {
        if connected {
            socket.send(b"whoami\n")?;
        } else {
            socket.send_to(b"whoami\n", addr)?;
        }
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf)?;
        let peer = if connected { socket.peer_addr()? } else { from };
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), peer))
    };
    let mut stdin = std::io::stdin().lock();
    loop {
        match ask() {
            Ok((reply, peer)) => println!("reply={reply} peer={peer}"),
            Err(e) => println!("error={}", e.raw_os_error().unwrap_or(0)),
        }
        let mut line = String::new();
        if stdin.read_line(&mut line).map_or(true, |n| n == 0) {
            std::process::exit(0)
        }
    }
}
