//! Minimal HTTP/1.1 client over `std::net`: plain HTTP only, one connection per request
//! (`Connection: close`), no async runtime. The response body is handed out as it arrives
//! (chunked, `Content-Length` or read-until-close framing), so a streaming caller can
//! timestamp every piece. Invariant: `Body::read` never blocks for more bytes than the
//! server has already sent, except to read a chunk-size line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::BenchError;

/// Longest status, header or chunk-size line accepted.
const MAX_LINE_BYTES: u64 = 16 * 1024;

/// Where a server listens: `http://host:port[/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub base_path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/base]` (port 80 when absent). `https` is refused.
    pub fn parse(url: &str) -> Result<Self, BenchError> {
        let bad = |reason: &str| BenchError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only plain http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let parse_port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| bad("port is not a number 0-65535"))
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in host"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if after.is_empty() => (h, 80),
                None => return Err(bad("junk after `]`")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            base_path: path.to_string(),
        })
    }
}

/// How the response body is delimited.
#[derive(Debug)]
enum Framing {
    /// `remaining` bytes left in the current chunk; `after_data` once a chunk's data was
    /// consumed and its CRLF not yet.
    Chunked {
        remaining: u64,
        after_data: bool,
        done: bool,
    },
    Length(u64),
    Close,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: Framing,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads the whole body as UTF-8 (lossy).
    pub fn into_string(mut self) -> Result<String, BenchError> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)
            .map_err(BenchError::io("reading a response body"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads the body and parses it as JSON; a non-2xx status is an error carrying the body.
    pub fn into_json(self, path: &str) -> Result<serde_json::Value, BenchError> {
        let status = self.status;
        let body = self.into_string()?;
        if !(200..300).contains(&status) {
            return Err(BenchError::Status {
                status,
                path: path.to_string(),
                body: snippet(&body),
            });
        }
        serde_json::from_str(&body).map_err(BenchError::json(format!("the response of {path}")))
    }

    fn next_chunk_size(&mut self) -> io::Result<Option<u64>> {
        let line = read_line(&mut self.reader)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(hex, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line `{line}`"),
            )
        })?;
        if size > 0 {
            return Ok(Some(size));
        }
        // Last chunk: skip trailers up to the empty line.
        while !read_line(&mut self.reader)?.is_empty() {}
        Ok(None)
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.framing {
            Framing::Close => self.reader.read(buf),
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked {
                remaining,
                after_data,
                ..
            } => self.read_chunked(buf, remaining, after_data),
        }
    }
}

impl Response {
    fn read_chunked(
        &mut self,
        buf: &mut [u8],
        remaining: u64,
        after_data: bool,
    ) -> io::Result<usize> {
        let mut remaining = remaining;
        if remaining == 0 {
            if after_data && !read_line(&mut self.reader)?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk data not followed by CRLF",
                ));
            }
            match self.next_chunk_size()? {
                Some(size) => remaining = size,
                None => {
                    self.framing = Framing::Chunked {
                        remaining: 0,
                        after_data: false,
                        done: true,
                    };
                    return Ok(0);
                }
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.framing = Framing::Chunked {
            remaining: remaining - n as u64,
            after_data: true,
            done: false,
        };
        Ok(n)
    }
}

/// One line without its CRLF/LF; EOF before a newline is an error.
fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside an HTTP line (or line too long)",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// First 300 characters of a body, for error messages.
pub fn snippet(body: &str) -> String {
    let mut s: String = body.chars().take(300).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

/// Sends one request and reads the status line and headers.
pub fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    json_body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, BenchError> {
    let full_path = format!("{}{}", ep.base_path, path);
    let ctx = |what: &str| format!("{what} {method} http://{}:{}{full_path}", ep.host, ep.port);
    let addr = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(BenchError::io(ctx("resolving the host of")))?
        .next()
        .ok_or_else(|| BenchError::Http(format!("host `{}` resolves to no address", ep.host)))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(BenchError::io(ctx("connecting for")))?;
    stream
        .set_nodelay(true)
        .map_err(BenchError::io(ctx("configuring")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(BenchError::io(ctx("configuring")))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(BenchError::io(ctx("configuring")))?;
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let mut head = format!(
        "{method} {full_path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\nAccept: */*\r\n",
        ep.port
    );
    if let Some(body) = json_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(json_body.unwrap_or_default());
    (&stream)
        .write_all(&message)
        .map_err(BenchError::io(ctx("sending")))?;
    read_head(BufReader::with_capacity(64 * 1024, stream))
        .map_err(BenchError::io(ctx("reading the response to")))
}

/// Parses the status line and headers, and picks the body framing.
fn read_head(mut reader: BufReader<TcpStream>) -> io::Result<Response> {
    let status_line = read_line(&mut reader)?;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!(
            "not an HTTP/1.x status line: `{status_line}`"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line `{status_line}`")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line `{line}`")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let framing =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Framing::Chunked {
                remaining: 0,
                after_data: false,
                done: false,
            }
        } else if let Some(len) = find("content-length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| invalid(format!("bad Content-Length `{len}`")))?,
            )
        } else {
            Framing::Close
        };
    Ok(Response {
        status,
        headers,
        reader,
        framing,
    })
}

/// POSTs `body` as JSON.
pub fn post_json(
    ep: &Endpoint,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Response, BenchError> {
    let bytes = serde_json::to_vec(body).map_err(BenchError::json("a request body"))?;
    request(ep, "POST", path, Some(&bytes), timeout)
}

/// GETs `path`.
pub fn get(ep: &Endpoint, path: &str, timeout: Duration) -> Result<Response, BenchError> {
    request(ep, "GET", path, None, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let ep = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.base_path.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let ep = Endpoint::parse("http://localhost/api/").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.base_path.as_str()),
            ("localhost", 80, "/api")
        );
        let ep = Endpoint::parse("http://[::1]:9000/x").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.base_path.as_str()),
            ("::1", 9000, "/x")
        );
        assert_eq!(Endpoint::parse("http://[::1]").unwrap().port, 80);
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
        assert!(Endpoint::parse("http://h:99999").is_err());
    }
}
