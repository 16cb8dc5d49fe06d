//! What the benches share: the BPF object they load and BPF_PROG_TEST_RUN.
//! Each bench compiles its own copy and uses part of it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lb_userspace::datapath::loader;

/// The object `cargo xtask bench` built (release), else a dev build's.
pub fn object() -> Result<PathBuf> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let built = ["release", "debug"]
        .map(|p| target.join(p).join("switchyard.bpf.o"))
        .into_iter()
        .find(|p| p.is_file());
    loader::find_object(built.as_deref())
}

/// BPF_PROG_TEST_RUN `repeat` times; the kernel's mean ns per run.
pub fn test_run(prog_fd: RawFd, packet: &[u8], repeat: u32) -> Result<u32> {
    test_run_from(prog_fd, packet, repeat, 0)
}

/// Like [`test_run`], for a tc program, on a packet that arrived on
/// interface `ingress_ifindex` (0: made by the node itself).
pub fn test_run_from(
    prog_fd: RawFd,
    packet: &[u8],
    repeat: u32,
    ingress_ifindex: u32,
) -> Result<u32> {
    // struct __sk_buff: 192 bytes; ingress_ifindex is its 10th u32.
    let mut skb = [0u32; 48];
    skb[9] = ingress_ifindex;
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: [u32; 5],
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: if ingress_ifindex == 0 { 0 } else { 192 },
        ctx_in: if ingress_ifindex == 0 {
            0
        } else {
            skb.as_ptr() as u64
        },
        ..Default::default()
    };
    // SAFETY: attr and both buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok(attr.duration)
}

/// An empty program (`r0 = verdict; exit`) of `prog_type`: the floor.
pub fn empty_program(prog_type: u32, verdict: i32) -> Result<RawFd> {
    #[repr(C)]
    #[derive(Default)]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        _rest: [u64; 12],
    }
    // mov64 r0, imm; exit
    let insns: [u64; 2] = [0xb7 | ((verdict as u32 as u64) << 32), 0x95];
    let license = c"GPL";
    let attr = LoadAttr {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    const BPF_PROG_LOAD: libc::c_long = 5;
    // SAFETY: attr points at live instructions and license.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const LoadAttr,
            std::mem::size_of::<LoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading an empty program");
    }
    Ok(fd as RawFd)
}

/// An Ethernet + IPv4 + TCP header (no payload, checksums left zero: the
/// programs do not check them).
pub fn tcp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 54];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p[14] = 0x45;
    p[16..18].copy_from_slice(&40u16.to_be_bytes());
    p[22] = 64;
    p[23] = 6;
    p[26..30].copy_from_slice(&src.octets());
    p[30..34].copy_from_slice(&dst.octets());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[36..38].copy_from_slice(&dport.to_be_bytes());
    p[46] = 0x50;
    p[47] = flags;
    p[48..50].copy_from_slice(&64240u16.to_be_bytes());
    p
}
