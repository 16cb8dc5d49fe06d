//! Rendering of the views from constructed rows; reading the maps needs a
//! loaded datapath and is covered by tests/packets.rs.

use std::net::Ipv4Addr;

use super::*;
use crate::datapath::addr::{ip_be, port_be};
use lb_common::xdp_mode;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn web() -> ServiceRow {
    ServiceRow {
        service: "default/web:http".into(),
        service_id: 11,
        frontend: "10.96.0.10:80/TCP".into(),
        policy: strings(&["external", "affinity=30s"]),
        backends: strings(&["10.244.1.1:8080", "10.244.1.2:8080"]),
        local_backends: strings(&["10.244.1.2:8080"]),
        new_flows: 7,
        packets: 100,
        bytes: 6400,
        refused_no_backend: 3,
    }
}

fn dns_without_backends() -> ServiceRow {
    ServiceRow {
        service: "kube-system/dns:dns".into(),
        service_id: 12,
        frontend: "10.96.0.10:53/UDP".into(),
        policy: Vec::new(),
        backends: Vec::new(),
        local_backends: Vec::new(),
        new_flows: 0,
        packets: 0,
        bytes: 0,
        refused_no_backend: 0,
    }
}

fn conn() -> ConnRow {
    ConnRow {
        protocol: "TCP".into(),
        client: "10.244.0.5:40000".into(),
        frontend: "10.96.0.10:80".into(),
        backend: "10.244.1.1:8080".into(),
        service: "default/web:http".into(),
        age_seconds: 12,
        idle_seconds: 3,
        tcp_flags: "SYN|ACK".into(),
    }
}

fn status(name: &[u8], role: u8, xdp: u8) -> InterfaceStatus {
    let mut st = InterfaceStatus {
        name: [0; 16],
        role,
        xdp_mode: xdp,
        _pad: [0; 2],
    };
    st.name[..name.len()].copy_from_slice(name);
    st
}

fn cells_match_header<R: Row>(row: &R) {
    // `table` indexes the widths by cell: a cell too many would panic.
    assert_eq!(row.cells().len(), R::HEADER.len(), "{:?}", R::HEADER);
}

#[test]
fn table_aligns_columns() {
    let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
    assert_eq!(t, "A    BB\nxxx  y\n");
}

#[test]
fn table_pads_all_but_the_last_column() {
    // Trailing cells stay unpadded, so lines never end in spaces unless
    // the last cell is empty (then only the separator remains).
    let t = table(
        &["NAME", "X", "LAST"],
        &[
            vec!["a".into(), "long-cell".into(), "z".into()],
            vec!["bbbbbb".into(), "".into(), "".into()],
        ],
    );
    assert_eq!(
        t,
        "NAME    X          LAST\n\
         a       long-cell  z\n\
         bbbbbb             \n"
    );
}

#[test]
fn table_without_rows_is_the_header() {
    assert_eq!(table(&["REASON", "PACKETS"], &[]), "REASON  PACKETS\n");
}

#[test]
fn every_view_has_a_cell_per_column() {
    cells_match_header(&web());
    cells_match_header(&conn());
    cells_match_header(&BackendRow {
        backend_id: 1,
        address: "10.244.1.1:8080".into(),
        protocol: "TCP".into(),
        open_flows: 0,
        used_by: Vec::new(),
    });
    cells_match_header(&AffinityRow {
        client: "10.244.0.5".into(),
        service: "default/web:http".into(),
        backend: "10.244.1.1:8080".into(),
        idle_seconds: 0,
        expires_in_seconds: 0,
    });
    cells_match_header(&interface_row(2, &status(b"eth0", 0, 0)));
    cells_match_header(&link_row("cgroup_sock_connect4", String::new()));
    cells_match_header(&StatRow {
        reason: "new_flow",
        packets: 0,
    });
    cells_match_header(&super::policy::PolicyRow {
        pod: "prod/web".into(),
        address: "10.244.0.20".into(),
        ingress_policies: strings(&["prod/deny"]),
        egress_policies: Vec::new(),
        ingress_set: 1,
        egress_set: 0,
        allowed_in: Vec::new(),
        allowed_out: Vec::new(),
        flows_in: 0,
        denied_in: 3,
        flows_out: 0,
        denied_out: 0,
    });
    cells_match_header(&super::policy::PolicyStatsRow {
        policy: "prod/deny".into(),
        id: 1,
        pods_in: 1,
        pods_out: 0,
        flows_allowed: 0,
        denied_in: 3,
        denied_out: 0,
    });
}

#[test]
fn services_table_marks_local_backends_and_refusals() {
    let out = render_rows(&[web(), dns_without_backends()], OutputFormat::Table).expect("render");
    assert_eq!(
        out,
        "SERVICE              FRONTEND           POLICY                 \
         BACKENDS                                  FLOWS  REFUSED\n\
         default/web:http     10.96.0.10:80/TCP  external,affinity=30s  \
         10.244.1.1:8080, 10.244.1.2:8080 (local)  7      3\n\
         kube-system/dns:dns  10.96.0.10:53/UDP                         \
         (none: refused)                           0      0\n"
    );
}

#[test]
fn json_is_pretty_with_keys_in_alphabetical_order() {
    let out = render_rows(&[web()], OutputFormat::Json).expect("render");
    let expected = r#"[
  {
    "backends": [
      "10.244.1.1:8080",
      "10.244.1.2:8080"
    ],
    "bytes": 6400,
    "frontend": "10.96.0.10:80/TCP",
    "local_backends": [
      "10.244.1.2:8080"
    ],
    "new_flows": 7,
    "packets": 100,
    "policy": [
      "external",
      "affinity=30s"
    ],
    "refused_no_backend": 3,
    "service": "default/web:http",
    "service_id": 11
  }
]
"#;
    assert_eq!(out, expected);
    let empty: &[ServiceRow] = &[];
    assert_eq!(
        render_rows(empty, OutputFormat::Json).expect("render"),
        "[]\n"
    );
}

#[test]
fn conntrack_table_shows_seconds() {
    let out = render_rows(&[conn()], OutputFormat::Table).expect("render");
    assert_eq!(
        out,
        "PROTO  CLIENT            FRONTEND       BACKEND          SERVICE           AGE  IDLE  TCP\n\
         TCP    10.244.0.5:40000  10.96.0.10:80  10.244.1.1:8080  default/web:http  12s  3s    SYN|ACK\n"
    );
}

#[test]
fn stats_are_an_object_by_reason_in_json() {
    let rows = [
        StatRow {
            reason: "established",
            packets: 12,
        },
        StatRow {
            reason: "new_flow",
            packets: 3,
        },
    ];
    assert_eq!(
        render_rows(&rows, OutputFormat::Json).expect("render"),
        "{\n  \"established\": 12,\n  \"new_flow\": 3\n}\n"
    );
    assert_eq!(
        render_rows(&rows, OutputFormat::Table).expect("render"),
        "REASON       PACKETS\nestablished  12\nnew_flow     3\n"
    );
}

#[test]
fn policy_lists_flags_then_scope_affinity_and_maglev() {
    let key = ServiceKey::scoped(0, 0, lb_common::PROTO_TCP, frontend_scope::IN_CLUSTER, 0);
    let master = BackendSlot {
        count: 7,
        flags: service_flags::MAGLEV | service_flags::SOURCE_RANGES | service_flags::EXTERNAL,
        affinity_timeout_s: 30,
        ..Default::default()
    };
    assert_eq!(
        policy(&key, &master),
        strings(&[
            "external",
            "source-ranges",
            "in-cluster",
            "affinity=30s",
            "maglev=7"
        ])
    );
    let plain = BackendSlot {
        flags: service_flags::DROP_IF_EMPTY,
        ..Default::default()
    };
    assert_eq!(
        policy(&ServiceKey::new(0, 0, lb_common::PROTO_TCP, 0), &plain),
        strings(&["local-only"])
    );
    for (flag, name) in [
        (service_flags::ROUND_ROBIN, "round-robin"),
        (service_flags::LEAST_CONN, "least-connection"),
    ] {
        let scheduled = BackendSlot {
            flags: flag,
            ..Default::default()
        };
        assert_eq!(
            policy(&ServiceKey::new(0, 0, lb_common::PROTO_TCP, 0), &scheduled),
            strings(&[name])
        );
    }
}

#[test]
fn backends_table_shows_open_flows() {
    let row = |id: u32, address: &str, open_flows: u32| BackendRow {
        backend_id: id,
        address: address.into(),
        protocol: "TCP".into(),
        open_flows,
        used_by: strings(&["default/web:http"]),
    };
    let rows = [row(1, "10.244.1.1:8080", 12), row(2, "10.244.1.2:8080", 0)];
    assert_eq!(
        render_rows(&rows, OutputFormat::Table).expect("render"),
        "ID  ADDRESS          PROTO  OPEN FLOWS  USED BY\n\
         1   10.244.1.1:8080  TCP    12          default/web:http\n\
         2   10.244.1.2:8080  TCP    0           default/web:http\n"
    );
}

#[test]
fn conn_backend_says_how_the_connection_gets_there() {
    let entry = |kind, second_ip: Ipv4Addr, second_port| ConnEntry {
        nat_ip_be: ip_be(Ipv4Addr::new(10, 244, 1, 1)),
        nat_port_be: port_be(8080),
        kind,
        second_ip_be: ip_be(second_ip),
        second_port_be: port_be(second_port),
        ..Default::default()
    };
    let none = Ipv4Addr::UNSPECIFIED;
    let node = Ipv4Addr::new(172, 18, 0, 2);
    assert_eq!(
        conn_backend(&entry(conn_kind::FORWARD, none, 0)),
        "10.244.1.1:8080"
    );
    assert_eq!(
        conn_backend(&entry(conn_kind::FORWARD, none, 41002)),
        "10.244.1.1:8080 (client port remapped to 41002)"
    );
    assert_eq!(
        conn_backend(&entry(conn_kind::HAIRPIN_FORWARD, none, 0)),
        "10.244.1.1:8080 (hairpin)"
    );
    assert_eq!(
        conn_backend(&entry(conn_kind::FORWARD_SNAT, node, 61000)),
        "10.244.1.1:8080 (via 172.18.0.2:61000)"
    );
}

#[test]
fn interface_rows_name_role_and_xdp_mode() {
    let row = interface_row(
        2,
        &status(b"eth0", interface_role::EXTERNAL, xdp_mode::NATIVE),
    );
    assert_eq!(row.cells(), strings(&["eth0", "2", "external", "native"]));
    let row = interface_row(
        3,
        &status(b"veth0", interface_role::EXTERNAL, xdp_mode::TC_FASTER),
    );
    assert_eq!(
        row.cells(),
        strings(&[
            "veth0",
            "3",
            "external",
            "none (auto: tc is faster on this driver)"
        ])
    );
    let row = interface_row(9, &status(b"0123456789abcdef", 42, 7));
    assert_eq!(
        row.cells(),
        strings(&["0123456789abcdef", "9", "unknown", "none"])
    );
}

#[test]
fn link_rows_from_pin_names() {
    let row = link_row("flannel+1_9_egress", "/pin/x".into());
    assert_eq!(
        row.cells(),
        strings(&["flannel.1", "9", "egress", "/pin/x"])
    );
    let row = link_row("cgroup_sock_connect4", "/pin/y".into());
    assert_eq!(
        row.cells(),
        strings(&["cgroup", "-", "sock_connect4", "/pin/y"])
    );
    let row = link_row("odd", "/pin/z".into());
    assert_eq!(row.cells(), strings(&["", "-", "odd", "/pin/z"]));
}

#[test]
fn flags() {
    assert_eq!(flags_text(tcp_seen::SYN | tcp_seen::ACK), "SYN|ACK");
    assert_eq!(flags_text(0), "");
}
