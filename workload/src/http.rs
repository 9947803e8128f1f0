//! A tiny HTTP/1.1 server for L7 policy tests: every well-formed request gets `200 OK` with the
//! body `palisade-workload <name> http <METHOD> <target> from <client address>\n` (so tests see
//! who connected: a transparent proxy keeps the client's address); connections are kept alive (unless
//! the client says `Connection: close` or speaks HTTP/1.0); request bodies with a
//! `Content-Length` are read and counted (the reply adds ` body=<n>`). Anything malformed gets
//! `400` and the connection is closed. Standard library only: one thread per connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::REPLY_PREFIX;

/// Idle keep-alive connections are closed after this.
const IDLE: Duration = Duration::from_secs(30);
/// Longest request line or header line accepted.
const MAX_LINE: usize = 8192;
/// Largest body read.
const MAX_BODY: u64 = 64 << 20;

/// What a port answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Every well-formed request gets `200` and the echo line (L7 policy tests: any `403` must
    /// come from the proxy).
    Echo,
    /// A small httpbin-like REST API, the tutorial's `api` tier: `GET /get` and `POST /post`
    /// answer `200` with a JSON document (args, headers, origin, url; `data` length for a POST),
    /// `GET /headers` and `GET /ip` too; a known path with the wrong method gets `405`, any other
    /// path `404`, as httpbin does.
    Api,
}

/// Most request headers kept for the API's echo; more is a `400`.
const MAX_HEADERS: usize = 100;

/// Serves HTTP on `listener` forever.
pub fn http_loop(name: &str, listener: &TcpListener, style: Style) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.to_string();
                thread::spawn(move || {
                    let _ = connection(&name, stream, style);
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn connection(name: &str, stream: TcpStream, style: Style) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?.ip();
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if read_line(&mut reader, &mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return bad_request(&mut out);
        };
        if !version.starts_with("HTTP/1.") {
            return bad_request(&mut out);
        }
        let (method, target) = (method.to_string(), target.to_string());
        let mut keep_alive = version == "HTTP/1.1";
        let mut length: u64 = 0;
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if read_line(&mut reader, &mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((n, v)) = h.split_once(':') else {
                return bad_request(&mut out);
            };
            let v = v.trim();
            if headers.len() == MAX_HEADERS {
                return bad_request(&mut out);
            }
            headers.push((n.trim().to_string(), v.to_string()));
            if n.eq_ignore_ascii_case("content-length") {
                match v.parse::<u64>() {
                    Ok(l) if l <= MAX_BODY => length = l,
                    _ => return bad_request(&mut out),
                }
            } else if n.eq_ignore_ascii_case("transfer-encoding") {
                // Not needed by the tests; refuse rather than misread the stream.
                return bad_request(&mut out);
            } else if n.eq_ignore_ascii_case("connection") {
                keep_alive = !v.eq_ignore_ascii_case("close");
            }
        }
        let read = io::copy(&mut (&mut reader).take(length), &mut io::sink())?;
        if read != length {
            return Ok(());
        }
        let (status, content_type, body) = match style {
            Style::Echo => {
                let mut body = format!("{REPLY_PREFIX} {name} http {method} {target}");
                if length > 0 {
                    body.push_str(&format!(" body={length}"));
                }
                body.push_str(&format!(" from {peer}"));
                body.push('\n');
                ("200 OK", "text/plain", body)
            }
            Style::Api => api_response(&method, &target, &headers, length, peer),
        };
        let conn = if keep_alive { "keep-alive" } else { "close" };
        // One write per response: `write!` on the socket would send each piece as its own
        // segment (nodelay), which costs more than the request on a tunnel.
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(response.as_bytes())?;
        out.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// The API style's answer: status line, content type and body.
fn api_response(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body_len: u64,
    peer: std::net::IpAddr,
) -> (&'static str, &'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let host = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or("", |(_, v)| v.as_str());
    let args: serde_json::Map<String, serde_json::Value> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), serde_json::Value::from(v))
        })
        .collect();
    let header_map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    let json = |v: serde_json::Value| ("200 OK", "application/json", format!("{v:#}\n"));
    let allowed = match path {
        "/get" | "/headers" | "/ip" => "GET",
        "/post" => "POST",
        _ => {
            return (
                "404 Not Found",
                "application/json",
                "{\"error\": \"not found\"}\n".to_string(),
            );
        }
    };
    if method != allowed {
        return (
            "405 Method Not Allowed",
            "application/json",
            format!("{{\"error\": \"method not allowed\", \"allow\": \"{allowed}\"}}\n"),
        );
    }
    let url = format!("http://{host}{target}");
    match path {
        "/headers" => json(serde_json::json!({"headers": header_map})),
        "/ip" => json(serde_json::json!({"origin": peer.to_string()})),
        "/post" => json(serde_json::json!({
            "args": args, "headers": header_map, "origin": peer.to_string(), "url": url,
            "data_length": body_len,
        })),
        _ => json(serde_json::json!({
            "args": args, "headers": header_map, "origin": peer.to_string(), "url": url,
        })),
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; longer lines are an error.
fn read_line(r: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<usize> {
    let n = r.by_ref().take(MAX_LINE as u64).read_line(line)?;
    if n == MAX_LINE && !line.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n)
}

fn bad_request(out: &mut TcpStream) -> io::Result<()> {
    let body = "bad request\n";
    write!(
        out,
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn exchange(listener_port: u16, raw: &str) -> String {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, listener_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_keep_alive_requests_and_rejects_garbage() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || http_loop("srv", &l, Style::Echo));
        let out = exchange(
            port,
            "GET /get HTTP/1.1\r\nHost: x\r\n\r\nPOST /post HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert!(
            out.contains("palisade-workload srv http GET /get from 127.0.0.1\n"),
            "{out}"
        );
        assert!(
            out.contains("palisade-workload srv http POST /post body=3 from 127.0.0.1\n"),
            "{out}"
        );
        assert!(
            out.contains("palisade-workload srv http GET /x from 127.0.0.1\n"),
            "{out}"
        );
        let bad = exchange(port, "NONSENSE\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    }

    #[test]
    fn api_style_answers_like_httpbin() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || http_loop("api", &l, Style::Api));
        let out = exchange(
            port,
            "GET /get?x=1 HTTP/1.1\r\nHost: api:5000\r\n\r\nPOST /post HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiDELETE /get HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 405 Method Not Allowed",
                "HTTP/1.1 404 Not Found"
            ],
            "{out}"
        );
        assert!(
            out.contains("\"url\": \"http://api:5000/get?x=1\""),
            "{out}"
        );
        assert!(out.contains("\"x\": \"1\""), "{out}");
        assert!(out.contains("\"data_length\": 2"), "{out}");
        assert!(out.contains("\"origin\": \"127.0.0.1\""), "{out}");
    }
}
