//! A small HTTP/1.1 client with a cookie jar, for end-to-end tests of
//! servers on loopback: one connection per request, chunked bodies
//! decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use super::reply::Reply;

/// An HTTP/1.1 client with a cookie jar: one connection per request.
pub struct Client {
    pub addr: SocketAddr,
    pub jar: BTreeMap<String, String>,
    /// Sends `Sec-Fetch-Site: same-origin` like a current browser on its
    /// own pages, unless the request names `Sec-Fetch-Site` or `Origin`
    /// itself (default on; off, it is a script that sends neither).
    pub browser: bool,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            jar: BTreeMap::new(),
            browser: true,
        }
    }

    pub fn on(&self, addr: SocketAddr) -> Self {
        Client {
            addr,
            jar: self.jar.clone(),
            browser: self.browser,
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        let body = body.as_ref();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        let says_where = headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("sec-fetch-site") || n.eq_ignore_ascii_case("origin")
        });
        if self.browser && !says_where {
            req.push_str("Sec-Fetch-Site: same-origin\r\n");
        }
        req.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        // A server may answer (413) and close before reading a large body.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        // A reset after the answer (the server did not read the whole
        // body) still leaves the answer in `raw`.
        let _ = stream.read_to_end(&mut raw).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let status = http::StatusCode::from_bytes(status.as_bytes()).unwrap();
        let mut headers = http::HeaderMap::new();
        for (n, v) in lines.filter_map(|l| l.split_once(':')) {
            let name = http::HeaderName::from_bytes(n.trim().as_bytes()).unwrap();
            headers.append(name, http::HeaderValue::from_str(v.trim()).unwrap());
        }
        if headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| v.to_str().unwrap_or("").contains("chunked"))
        {
            body = dechunk(&body);
        }
        for v in headers.get_all(http::header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                let expired = v.to_ascii_lowercase().contains("max-age=0");
                if value.is_empty() || expired {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], "").await
    }

    pub async fn form(&mut self, path: &str, body: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}
