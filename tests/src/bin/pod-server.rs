//! A server for test pods: answers every TCP line and every UDP datagram
//! with its name, so a test sees which backend served it.
//!
//! pod-server --name NAME [--tcp PORT]... [--udp PORT]...
//! Prints "ready" once every listener is bound.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;

fn usage() -> ! {
    eprintln!("usage: pod-server --name NAME [--tcp PORT]... [--udp PORT]...");
    std::process::exit(2)
}

fn serve_tcp_conn(stream: TcpStream, reply: String) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        if line.is_err() || writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn main() {
    let mut name = None;
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" => tcp.push(value.parse::<u16>().unwrap_or_else(|_| usage())),
            "--udp" => udp.push(value.parse::<u16>().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let name = name.unwrap_or_else(|| usage());
    let reply = format!("{name}\n");
    let mut workers = Vec::new();
    for port in tcp {
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            eprintln!("pod-server {name}: bind tcp {port}: {e}");
            std::process::exit(1)
        });
        let reply = reply.clone();
        workers.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let reply = reply.clone();
                thread::spawn(move || serve_tcp_conn(stream, reply));
            }
        }));
    }
    for port in udp {
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            eprintln!("pod-server {name}: bind udp {port}: {e}");
            std::process::exit(1)
        });
        let reply = reply.clone();
        workers.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(reply.as_bytes(), peer);
            }
        }));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for w in workers {
        let _ = w.join();
    }
}
