//! Requests through agnhost, the upstream e2e test server: a client pod's
//! netexec `/dial` endpoint (reached through the API server's pod proxy)
//! makes requests from inside the cluster; netexec backends answer their
//! pod name on HTTP `/hostname` and to "hostname" over UDP.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::scenarios::Requester;

/// Runs kubectl with these arguments; stdout, or an error.
pub type Kubectl = fn(&[&str]) -> Result<String>;

/// A pod running `agnhost netexec --http-port=8080`, making requests for us.
pub struct ClientPod {
    pub namespace: String,
    pub pod: String,
    pub kubectl: Kubectl,
}

impl ClientPod {
    /// One request from the pod; the answering backend's reply. `host` may
    /// be a DNS name: the pod resolves it through the cluster DNS.
    pub fn dial(&self, protocol: &str, host: &str, port: u16) -> Result<String> {
        let mut answers = self.dial_many(protocol, host, port, 1)?;
        answers
            .pop()
            .with_context(|| format!("no answer from {host}:{port} via {}", self.pod))
    }

    /// `tries` requests from the pod, each on a new connection (UDP: a new
    /// socket); every answer, or an error naming the failures.
    pub fn dial_many(
        &self,
        protocol: &str,
        host: &str,
        port: u16,
        tries: usize,
    ) -> Result<Vec<String>> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}:8080/proxy/dial?request=hostname&protocol={protocol}&host={host}&port={port}&tries={tries}",
            self.namespace, self.pod
        );
        let text = (self.kubectl)(&["get", "--raw", &path])?;
        let reply: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("dial reply {text:?}"))?;
        let answers: Vec<String> = reply["responses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        anyhow::ensure!(
            answers.len() == tries,
            "{} of {tries} {protocol} requests from {} to {host}:{port} answered: {reply}",
            answers.len(),
            self.pod
        );
        Ok(answers)
    }
}

impl Requester for ClientPod {
    fn tcp(&self, to: SocketAddrV4) -> Result<String> {
        self.dial("http", &to.ip().to_string(), to.port())
    }
    fn udp(&self, to: SocketAddrV4) -> Result<String> {
        self.dial("udp", &to.ip().to_string(), to.port())
    }
}

/// `GET /hostname` on a new connection; the body (the backend's pod name).
pub fn http_hostname(to: SocketAddrV4, timeout: Duration) -> Result<String> {
    http_body(to, "/hostname", timeout)
}

/// `GET path` on a new connection; the body, trimmed.
pub fn http_body(to: SocketAddrV4, path: &str, timeout: Duration) -> Result<String> {
    let (status, body) = http_get(to, path, timeout)?;
    anyhow::ensure!(status == 200, "GET {path} from {to}: status {status}");
    Ok(body)
}

/// `GET path` on a new connection; (status, body trimmed).
pub fn http_get(to: SocketAddrV4, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to.into(), timeout)
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading from {to}"))?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status from {to}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// "hostname" over UDP; the reply.
pub fn udp_hostname(to: SocketAddrV4, timeout: Duration) -> Result<String> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"hostname", to)?;
    let mut buf = [0u8; 256];
    let (n, _) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}
