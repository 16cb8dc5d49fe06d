//! New interfaces are attached when the kernel announces them (RTM_NEWLINK
//! on an rtnetlink socket subscribed to link and IPv4 route changes), not
//! at the next poll of the interface list: a pod's first packet — typically
//! its first DNS query — must already meet the programs. Route changes
//! tell when a pod's host route (its address, for the source checks) is in. The poll stays as a safety net
//! (a notification lost to a full socket buffer is only a wake-up missed:
//! what matters is re-read from the interface list either way).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

/// A subscription to link changes in this network namespace.
pub struct LinkEvents {
    socket: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    pub fn subscribe() -> Result<Self> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening an rtnetlink socket");
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_ROUTE) as u32;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("subscribing to link and route changes (RTMGRP_LINK, RTMGRP_IPV4_ROUTE)");
        }
        // SAFETY: the OwnedFd is a valid socket, owned by the AsyncFd from
        // here on and never replaced or closed behind its back.
        let socket =
            unsafe { AsyncFd::register(fd) }.context("registering the rtnetlink socket")?;
        Ok(Self { socket })
    }

    /// Waits until links changed (any link message), then drains what is
    /// queued: one wake-up per burst, however many messages it held.
    pub async fn changed(&self) -> Result<()> {
        loop {
            let mut ready = self.socket.readable().await?;
            let mut drained = false;
            let mut buf = [0u8; 8192];
            loop {
                let n = unsafe {
                    libc::recv(
                        self.socket.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    drained = true;
                    continue;
                }
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // Messages were lost: links changed all the same.
                    Some(libc::ENOBUFS) => {
                        drained = true;
                        continue;
                    }
                    _ if n == 0 => break,
                    _ => return Err(err).context("reading link changes"),
                }
            }
            ready.clear_ready();
            if drained {
                return Ok(());
            }
        }
    }
}
