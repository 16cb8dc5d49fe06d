//! ICMP: errors quoting a translated flow are translated back, and the
//! port-unreachable rejects the datapath sends are rate-limited.

use std::net::Ipv4Addr;

use lb_common::{program_names, reason};

use crate::build::*;
use crate::fixture::*;

#[test]
fn icmp_errors_quoting_a_dnated_flow_get_the_service_address_back() {
    let mut f = fixture();
    let router = Ipv4Addr::new(10, 244, 0, 1);
    // A flow client → VIP:80, DNATed on its way out of the pod.
    let (_, syn) = f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, SYN).build());
    let translated = parse_checked(&syn);
    assert!(BACKENDS.contains(&translated.dst));
    // A router answers the translated packet with "fragmentation needed",
    // quoting its IP header and first 8 bytes, as RFC 792 asks.
    for (kind, code, quote_len) in [(3, 4, 28), (11, 0, 28), (3, 4, syn.len() - 14)] {
        let error = icmp_error(router, CLIENT, kind, code, &syn[14..14 + quote_len]);
        let (verdict, out) = f.run_to_pod(&error);
        assert_eq!(verdict, TC_ACT_OK);
        // Outer header untouched; the quote now says client → VIP:80.
        assert_eq!(quoted_flow(&error, &out), (CLIENT, VIP, 41000, 80));
    }
    assert_eq!(f.maps.reason_count(reason::ICMP_ERROR_TRANSLATED), 3);
    // An error about a flow the datapath never translated: untouched.
    let other = Pkt::tcp(CLIENT, 41001, Ipv4Addr::new(192, 0, 2, 7), 443, SYN).build();
    let error = icmp_error(router, CLIENT, 3, 4, &other[14..42]);
    assert_eq!(f.run_to_pod(&error).1[..error.len()], error[..]);
}

#[test]
fn icmp_errors_about_an_external_clients_node_port_flow_get_the_node_port_back() {
    let (node_ip, client) = (NODE_IP, EXTERNAL_CLIENT);
    let mut f = fixture();
    program_node_ports(&f, node_ip);
    let mut run = |program: &str, packet: &[u8]| {
        test_run(f.datapath.program_fd(program).expect("fd"), packet)
    };
    // A segment to the node port, DNATed to the local backend…
    let (_, segment) = run(
        program_names::FROM_WORLD,
        &Pkt::tcp(client, 41500, node_ip, 30080, SYN).build(),
    );
    let translated = parse_checked(&segment);
    assert_eq!((translated.dst, translated.dport), (BACKENDS[0], 8080));
    // …too big for the link to the pod: this node answers "fragmentation
    // needed" on its way out to the client. The quote must name the node
    // port the client used, or path-MTU discovery never hears of it.
    let error = icmp_error(node_ip, client, 3, 4, &segment[14..42]);
    let (verdict, out) = run(program_names::TO_WORLD, &error);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(quoted_flow(&error, &out), (client, node_ip, 41500, 30080));
    assert_eq!(f.maps.reason_count(reason::ICMP_ERROR_TRANSLATED), 1);
}

/// A flood of SYNs with spoofed sources to a service without endpoints
/// would turn every node into an ICMP reflector. Rejects are rate-limited
/// like the kernel's own ICMP errors (burst 50, then 1000/s per CPU); the
/// rest are dropped and counted. A lone client is still refused at once.
#[test]
fn icmp_rejects_are_rate_limited() {
    let mut f = fixture();
    let (verdict, _) = f.run_from_pod(&Pkt::tcp(CLIENT, 44000, EMPTY_VIP, 80, SYN).build());
    assert_ne!(
        verdict, 2,
        "the first client is refused with ICMP, not dropped"
    );
    for i in 0..300u16 {
        let spoofed = Ipv4Addr::new(10, 244, 9, (i % 250) as u8 + 1);
        f.run_from_pod(&Pkt::tcp(spoofed, 44001 + i, EMPTY_VIP, 80, SYN).build());
    }
    let rejected = f.maps.reason_count(reason::NO_BACKEND_REJECTED);
    let limited = f.maps.reason_count(reason::REJECT_RATE_LIMITED);
    assert_eq!(rejected + limited, 301, "every SYN is refused or dropped");
    // The burst, plus what the bucket earns while the test runs (1/ms).
    assert!(
        rejected <= 50 + 60,
        "{rejected} rejects sent for 301 SYNs in a burst"
    );
    assert!(limited >= 190, "{limited} dropped");
}
