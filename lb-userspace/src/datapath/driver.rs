//! The kernel driver behind a network interface (ethtool's driver info),
//! for the choices that depend on it: `--xdp auto` leaves XDP off where
//! the tc path was measured faster.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Drivers on which tc was measured faster than native XDP: a veth has no
/// hardware, so its "native" XDP runs in the peer's NAPI poll after the
/// sender's skb was turned into an XDP buffer (docs/benchmarks.md, NodePort
/// UDP flood: 14 % fewer packets delivered than tc).
pub const TC_FASTER_THAN_XDP: &[&str] = &["veth"];

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DriverInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const ETHTOOL_GDRVINFO: u32 = 0x3;

/// The driver's name ("veth", "virtio_net", "mlx5_core", …).
pub fn driver(iface: &str) -> io::Result<String> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?}"),
        ));
    }
    // SAFETY: a plain socket call; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: both are plain C structs for which all zeroes is valid.
    let mut info: DriverInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with GDRVINFO writes at most
    // size_of::<DriverInfo>() bytes into `info`, which outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info
        .driver
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether `--xdp auto` should leave XDP off on `iface` (tc is faster on
/// its driver); an interface whose driver cannot be read gets XDP tried.
pub fn tc_faster_than_xdp(iface: &str) -> Option<String> {
    driver(iface)
        .ok()
        .filter(|d| TC_FASTER_THAN_XDP.contains(&d.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_driver_info_or_a_name() {
        // `lo` answers GDRVINFO on some kernels and not on others; either
        // way no panic and no garbage.
        if let Ok(name) = driver("lo") {
            assert!(name.is_ascii(), "{name:?}");
        }
        assert!(driver("").is_err());
        assert!(driver("a-name-far-too-long-for-ifnamsiz").is_err());
        assert!(driver("sy-no-such-if0").is_err());
    }
}
