//! The client side of the admin endpoint, for `legsync status`, `legsync
//! reload | reopen | legs`: one HTTP/1.1 request over loopback.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long an admin command waits for the host.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `method path` to the admin endpoint at `addr` (`host:port`),
/// with the token if one is given (the control routes need it); returns
/// the status and the body.
pub async fn request(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&super::token::AdminToken>,
) -> anyhow::Result<(StatusCode, String)> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.with_context(|| {
            format!("cannot reach the admin endpoint at {addr}: is `legsync run` up, with `admin` at that address?")
        })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr);
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, token.header());
        }
        let request = request.body(Empty::<Bytes>::new())?;
        // The connection is driven here, beside the request, not by a task
        // of its own: it ends when the sender is dropped after the answer.
        let ask = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            drop(sender);
            Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (answer, _) = tokio::join!(ask, connection);
        answer
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("the admin endpoint at {addr} did not answer within {TIMEOUT:?}")
        })?
}
