//! The process's Prometheus scrape endpoint (`metrics-exporter-prometheus`).
//!
//! The `metrics` facade has one global recorder per process, installed for
//! good; so there is at most one endpoint per process, and it serves until
//! the process exits. Asking again for the same address (or for port 0 on
//! the same IP) returns the running endpoint.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Histogram buckets of every `*_seconds` histogram: 1 ms to 10 min.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// What `GET /status` answers: a JSON document, from whoever registered.
type StatusSource = Arc<dyn Fn() -> String + Send + Sync>;

static STATUS: Mutex<Option<StatusSource>> = Mutex::new(None);

/// Makes `GET /status` on the endpoint answer `status()` (a JSON
/// document); replaces what answered before. A stream job registers its
/// status here.
pub fn set_status_source(status: impl Fn() -> String + Send + Sync + 'static) {
    *STATUS.lock() = Some(Arc::new(status));
}

/// What `POST /job/...` does: given the path and the request's body,
/// the status code and JSON body of the answer.
pub type ControlSource = Arc<dyn Fn(&str, &[u8]) -> (u16, String) + Send + Sync>;

static CONTROL: Mutex<Option<ControlSource>> = Mutex::new(None);

/// Makes `POST /job/<action>` on the endpoint call `control(path, body)`,
/// which answers a status code and a JSON body; `None` turns it off again
/// (then such requests are answered 404). A stream job registers its stop
/// and drain requests here when its config allows remote control.
pub fn set_control_source(control: Option<ControlSource>) {
    *CONTROL.lock() = control;
}

/// The largest request body `POST /job/...` reads.
const MAX_CONTROL_BODY: usize = 64 * 1024;

static ENDPOINT: Mutex<Option<PrometheusEndpoint>> = Mutex::new(None);

/// The running scrape endpoint: `GET http://<addr>/metrics` (also `/`),
/// `/status` (the job's status as JSON, once a job registered it) and
/// `/health` (`OK`).
#[derive(Debug, Clone)]
pub struct PrometheusEndpoint {
    addr: SocketAddr,
    handle: PrometheusHandle,
}

impl PrometheusEndpoint {
    /// The address it listens on (with the port chosen, if 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// `http://<addr>/status`.
    pub fn status_url(&self) -> String {
        format!("http://{}/status", self.addr)
    }

    /// What a scrape returns now, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The endpoint this process serves, if one was started.
pub fn prometheus_endpoint() -> Option<PrometheusEndpoint> {
    ENDPOINT.lock().clone()
}

/// Serves the process's metrics at `addr` (`GET /metrics`; port 0: a
/// free port) and installs the global recorder; `GET /status` answers what
/// [`set_status_source`] registered. Returns the running endpoint if one
/// is already serving at that address.
pub fn serve_prometheus(addr: SocketAddr) -> Result<PrometheusEndpoint> {
    let mut slot = ENDPOINT.lock();
    if let Some(running) = &*slot {
        let same_ip = running.addr.ip() == addr.ip();
        if same_ip && (addr.port() == 0 || addr.port() == running.addr.port()) {
            return Ok(running.clone());
        }
        return Err(Error::MetricsEndpoint {
            addr,
            reason: format!(
                "this process already serves metrics at {} (one endpoint per process)",
                running.addr
            )
            .into(),
        });
    }
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::io(format!("binding the metrics endpoint to {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(format!("binding the metrics endpoint to {addr}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting up the metrics endpoint", e))?;
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(|e| Error::MetricsEndpoint {
            addr,
            reason: e.to_string().into(),
        })?
        .build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the metrics endpoint's runtime", e))?;

    let (go, started) = mpsc::channel::<()>();
    let served = handle.clone();
    std::thread::Builder::new()
        .name("gress-metrics-http".into())
        .spawn(move || {
            if started.recv().is_err() {
                return;
            }
            if let Err(e) = runtime.block_on(serve(listener, served)) {
                tracing::error!(addr = %bound, error = %e, "the metrics endpoint stopped");
            }
        })
        .map_err(|e| Error::io("starting the metrics endpoint's thread", e))?;
    metrics::set_global_recorder(recorder).map_err(|_| Error::MetricsEndpoint {
        addr,
        reason: "another metrics recorder is installed in this process".into(),
    })?;
    let _ = go.send(());
    super::describe();
    let endpoint = PrometheusEndpoint {
        addr: bound,
        handle,
    };
    *slot = Some(endpoint.clone());
    tracing::info!(url = %endpoint.url(), "serving metrics");
    Ok(endpoint)
}

/// Accepts connections until the process exits, one task each.
async fn serve(listener: TcpListener, handle: PrometheusHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // Histograms keep their samples until drained.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    if request.method() == hyper::Method::POST
                        && request.uri().path().starts_with("/job/")
                    {
                        return Ok::<_, Infallible>(control(request).await);
                    }
                    Ok::<_, Infallible>(answer(&request, &handle))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

fn respond(status: StatusCode, kind: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// `POST /job/<action>`: what the registered control answers.
async fn control(request: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;

    let json = |status: StatusCode, error: &str| {
        respond(
            status,
            "application/json",
            format!("{{\"error\": {}}}\n", json_string(error)),
        )
    };
    let path = request.uri().path().to_string();
    let Some(control) = CONTROL.lock().clone() else {
        return json(
            StatusCode::NOT_FOUND,
            "remote control is off for the job in this process (JobConfig::with_remote_control)",
        );
    };
    let body = match http_body_util::Limited::new(request.into_body(), MAX_CONTROL_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &format!("reading the request: {e}"),
            );
        }
    };
    // The job's control may wait on locks: not on the runtime's threads.
    match tokio::task::spawn_blocking(move || control(&path, &body)).await {
        Ok((code, answer)) => respond(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            answer,
        ),
        Err(e) => json(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/status" => match STATUS.lock().clone() {
            Some(status) => respond(StatusCode::OK, "application/json", status()),
            None => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "no job runs in this process\n".into(),
            ),
        },
        "/health" => respond(StatusCode::OK, "text/plain; charset=utf-8", "OK\n".into()),
        "/metrics" | "/" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        other => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("{other}: not here; try /metrics or /status\n"),
        ),
    }
}
