//! The admin HTTP port: `/health` (200 while the process runs), `/ready` (200 only while every
//! backend has a live connection, else 503), `/metrics` (Prometheus text format), and
//! `POST /reload` (reload the config file: 200 with what changed, or 400 with why not), and the
//! status page: `/` and the `/status.json` it polls (see `status`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::proxy::Proxy;

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening");
    }
    while let Some(stream) = crate::listener::accept_tcp(&listener, &shutdown, "admin").await {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/reload" {
                        return Ok::<_, Infallible>(reload(&proxy).await);
                    }
                    Ok::<_, Infallible>(respond(&proxy, req))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn reload(proxy: &Arc<Proxy>) -> Response<Full<Bytes>> {
    match crate::reload::reload(proxy, "POST /reload").await {
        Ok(summary) => reply(
            StatusCode::OK,
            "text/plain",
            format!("reloaded: {summary}\n"),
        ),
        Err(reason) => reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("reload refused, the running configuration stays: {reason}\n"),
        ),
    }
}

fn respond(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only (POST for /reload)\n".into(),
        );
    }
    match req.uri().path() {
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::status::PAGE.into(),
        ),
        "/status.json" => reply(
            StatusCode::OK,
            "application/json",
            crate::status::json(proxy),
        ),
        "/health" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            let topology = proxy.topology.load();
            if topology.ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                let down: Vec<&str> = topology
                    .backends
                    .iter()
                    .filter(|b| b.connections_up() == 0)
                    .map(|b| &*b.addr)
                    .collect();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: no connection to {}\n", down.join(", ")),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            proxy
                .metrics
                .render(&proxy.topology.load(), &proxy.tenants.load()),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
