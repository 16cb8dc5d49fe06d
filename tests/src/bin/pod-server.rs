//! A server for test pods: answers every TCP line and every UDP datagram
//! with its name, so a test sees which backend served it. A request
//! `whoami` is answered with the name and the peer address the server saw
//! (to check source NAT and client-address preservation); a TCP line
//! `linger N` makes the server answer once more N seconds after the client
//! half-closed (shut down its writes), as a slow server answering a client
//! that sent its whole request does; a TCP line `bulk N` is answered with
//! N bytes of `y` and a newline (a download); a datagram
//! `echo <bytes>` with the name, a space and the bytes (large requests
//! and answers, as agnhost's netexec echoes). `--delay-ms N` makes every
//! TCP answer wait N milliseconds (a slow backend).
//!
//! pod-server --name NAME [--tcp PORT]... [--udp PORT]... [--delay-ms N]
//! Prints "ready" once every listener is bound.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: pod-server --name NAME [--tcp PORT]... [--udp PORT]... [--delay-ms N]");
    std::process::exit(2)
}

fn answer(name: &str, request: &str, peer: std::net::SocketAddr) -> String {
    if request.trim() == "whoami" {
        format!("{name} {peer}\n")
    } else {
        format!("{name}\n")
    }
}

fn serve_tcp_conn(stream: TcpStream, name: String, delay: Duration) {
    let (Ok(mut writer), Ok(peer)) = (stream.try_clone(), stream.peer_addr()) else {
        return;
    };
    let reader = BufReader::new(stream);
    let mut linger = None;
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if let Some(secs) = line.trim().strip_prefix("linger ") {
            linger = secs.parse::<u64>().ok();
            continue;
        }
        if let Some(bytes) = line.trim().strip_prefix("bulk ") {
            let mut body = vec![b'y'; bytes.parse::<usize>().unwrap_or(0)];
            body.push(b'\n');
            if writer.write_all(&body).is_err() {
                return;
            }
            continue;
        }
        thread::sleep(delay);
        if writer
            .write_all(answer(&name, &line, peer).as_bytes())
            .is_err()
        {
            return;
        }
    }
    // The client half-closed; answer late if asked to.
    if let Some(secs) = linger {
        thread::sleep(Duration::from_secs(secs));
        let _ = writer.write_all(format!("{name} after {secs} s\n").as_bytes());
    }
}

fn main() {
    let mut name = None;
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    let mut delay = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" => tcp.push(value.parse::<u16>().unwrap_or_else(|_| usage())),
            "--udp" => udp.push(value.parse::<u16>().unwrap_or_else(|_| usage())),
            "--delay-ms" => {
                delay = Duration::from_millis(value.parse::<u64>().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    let name = name.unwrap_or_else(|| usage());
    let mut workers = Vec::new();
    for port in tcp {
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            eprintln!("pod-server {name}: bind tcp {port}: {e}");
            std::process::exit(1)
        });
        let name = name.clone();
        workers.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                thread::spawn(move || serve_tcp_conn(stream, name, delay));
            }
        }));
    }
    for port in udp {
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            eprintln!("pod-server {name}: bind udp {port}: {e}");
            std::process::exit(1)
        });
        let name = name.clone();
        workers.push(thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let reply = match buf[..n].strip_prefix(b"echo ") {
                    Some(bytes) => [format!("{name} ").as_bytes(), bytes].concat(),
                    None => answer(&name, &String::from_utf8_lossy(&buf[..n]), peer).into_bytes(),
                };
                let _ = socket.send_to(&reply, peer);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for w in workers {
        let _ = w.join();
    }
}
