//! The admin HTTP port: `/health` (200 while the process runs), `/ready` (200 only while every
//! backend has a live connection, else 503), `/metrics` (Prometheus text format), and
//! `POST /reload` (reload the config file: 200 with what changed, or 400 with why not),
//! `POST /tenants/NAME/flush` (remove a tenant's keys in the background; see cleanup), and the
//! status page: `/` and the `/status.json` it polls (see `status`).
//!
//! The port has no authentication of its own: whoever reaches it may reload and flush. Bind it
//! to loopback or an operators' network (`[admin] listen`), never where tenants' clients reach.

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
                    if req.method() == Method::POST {
                        if let Some(name) = flush_target(req.uri().path()) {
                            return Ok::<_, Infallible>(flush(&proxy, &name));
                        }
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

/// `/tenants/NAME/flush`: the tenant's name (percent-decoding is not needed: names are
/// printable ASCII without spaces, and a `%` is taken as written).
fn flush_target(path: &str) -> Option<String> {
    let name = path.strip_prefix("/tenants/")?.strip_suffix("/flush")?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

/// `POST /tenants/NAME/flush`: 202 once the flush has started (progress in /metrics), 404 for
/// no such tenant, 409 while one runs.
fn flush(proxy: &Arc<Proxy>, name: &str) -> Response<Full<Bytes>> {
    match crate::cleanup::start(proxy, name) {
        Ok(()) => reply(
            StatusCode::ACCEPTED,
            "text/plain",
            format!(
                "flushing tenant {name}'s keys; progress: keygate_tenant_flush_* in /metrics\n"
            ),
        ),
        Err(crate::cleanup::Refused::NoSuchTenant) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no tenant named {name:?}\n"),
        ),
        Err(crate::cleanup::Refused::AlreadyRunning) => reply(
            StatusCode::CONFLICT,
            "text/plain",
            format!("a flush of tenant {name} is running already\n"),
        ),
    }
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
            "GET only (POST for /reload and /tenants/NAME/flush)\n".into(),
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
            let topologies = proxy.topologies();
            if topologies.iter().all(|(_, t)| t.ready()) {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                let down: Vec<&str> = topologies
                    .iter()
                    .flat_map(|(_, t)| t.backends.iter())
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
        "/metrics" => {
            let mut text = proxy.metrics.render(
                &proxy.topologies(),
                &proxy.tenants.load(),
                proxy.config.load().tenant_series(),
            );
            proxy.flushes.render(&mut text);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        path if flush_target(path).is_some() => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "POST only\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
