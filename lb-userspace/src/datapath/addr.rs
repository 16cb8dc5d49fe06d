//! Conversions between host types and the network-byte-order fields of the
//! map types (see lb-common).

use std::net::Ipv4Addr;

/// The u32 whose in-memory bytes are the address octets.
pub fn ip_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_be(ip_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip_be.to_ne_bytes())
}

pub fn port_be(port: u16) -> u16 {
    port.to_be()
}

pub fn port_from_be(port_be: u16) -> u16 {
    u16::from_be(port_be)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_wire_order() {
        let ip = Ipv4Addr::new(10, 96, 0, 1);
        assert_eq!(ip_from_be(ip_be(ip)), ip);
        assert_eq!(ip_be(ip).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(port_be(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_from_be(port_be(53)), 53);
    }
}
