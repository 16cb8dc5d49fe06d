//! Traffic measurements shared by the benchmarks (run inside a client's
//! network namespace), and the statistics they report.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One TCP connection, one request, the reply line (the backend's name).
pub fn tcp_once(addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"x\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Connections (connect, request, reply, close) per second over `period`,
/// and how many failed (each reported on stderr; more than 10 end the
/// measurement).
pub fn conn_rate(to: SocketAddrV4, period: Duration) -> Result<(f64, u32)> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut failed = 0u32;
    while started.elapsed() < period {
        match tcp_once(to, Duration::from_secs(1)) {
            Ok(_) => done += 1,
            Err(e) => {
                failed += 1;
                eprintln!("  connection {} to {to} failed: {e:#}", done + 1);
                if failed > 10 {
                    bail!("more than 10 failed connections to {to}");
                }
            }
        }
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), failed))
}

/// p50 and p99 request latency (µs) over `requests` on one kept-alive
/// connection.
pub fn latency(to: SocketAddrV4, requests: usize) -> Result<(f64, f64)> {
    let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut writer = s;
    let mut samples = Vec::with_capacity(requests);
    let mut line = String::new();
    for _ in 0..requests {
        let t = Instant::now();
        writer.write_all(b"x\n")?;
        line.clear();
        reader.read_line(&mut line).context("reading a reply")?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 50.0), percentile(&samples, 99.0)))
}

/// What a closed-loop load of new connections saw: each request's backend
/// and latency (connect to answer), and the failures.
#[derive(Debug, Default)]
pub struct RequestLoad {
    pub requests: Vec<(String, Duration)>,
    pub failed: u32,
    pub elapsed: Duration,
}

impl RequestLoad {
    /// Requests each backend answered, by name.
    pub fn per_backend(&self) -> std::collections::BTreeMap<String, usize> {
        let mut n = std::collections::BTreeMap::new();
        for (backend, _) in &self.requests {
            *n.entry(backend.clone()).or_default() += 1;
        }
        n
    }

    /// Latency percentile (ms).
    pub fn latency_ms(&self, p: f64) -> f64 {
        let mut ms: Vec<f64> = self
            .requests
            .iter()
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        percentile(&ms, p)
    }
}

/// `workers` clients in parallel (threads of the calling one, so in its
/// network namespace), each opening a connection per request to `to` for
/// `period`: steady load whose backend choice is made per connection. With
/// `rate` (requests per second, all workers together) each worker starts
/// its requests on a fixed schedule, so every scheduler is offered the same
/// load (a worker whose request is late starts the next at once); without,
/// each starts the next as soon as the last is answered.
pub fn request_load(
    to: SocketAddrV4,
    workers: usize,
    rate: Option<f64>,
    period: Duration,
) -> RequestLoad {
    let started = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                let mut seen = RequestLoad::default();
                // Workers spread over the interval, not all at once.
                let offset = interval.map_or(Duration::ZERO, |i| i * w as u32 / workers as u32);
                let mut next = started + offset;
                while started.elapsed() < period {
                    if let Some(interval) = interval {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += interval;
                    }
                    let t = Instant::now();
                    match tcp_once(to, Duration::from_secs(2)) {
                        Ok(backend) => seen.requests.push((backend, t.elapsed())),
                        Err(_) => seen.failed += 1,
                    }
                }
                seen
            })
        })
        .collect();
    let mut load = RequestLoad::default();
    for t in threads {
        let seen = t.join().unwrap_or_else(|_| RequestLoad {
            failed: 1,
            ..Default::default()
        });
        load.requests.extend(seen.requests);
        load.failed += seen.failed;
    }
    load.elapsed = started.elapsed();
    load
}

/// UDP request/replies per second on one connected socket over `period`.
pub fn udp_rate(to: SocketAddrV4, period: Duration) -> Result<f64> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let started = Instant::now();
    let mut done = 0u64;
    let mut buf = [0u8; 256];
    while started.elapsed() < period {
        socket.send(b"x\n")?;
        if socket.recv(&mut buf).is_ok() {
            done += 1;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// "median (min–max)" of samples.
pub fn median_and_range(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(f64::total_cmp);
    format!(
        "{:.0} ({:.0}–{:.0})",
        v[v.len() / 2],
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0)
    )
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
