//! The process's Prometheus scrape endpoint (`metrics-exporter-prometheus`).
//!
//! The `metrics` facade has one global recorder per process, installed for
//! good; so there is at most one endpoint per process, and it serves until
//! the process exits. Asking again for the same address (or for port 0 on
//! the same IP) returns the running endpoint.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

use metrics_exporter_prometheus::{
    BuildError, ExporterFuture, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Histogram buckets of every `*_seconds` histogram: 1 ms to 10 min.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// Binds tried when port 0 was asked for and the chosen port is taken
/// between choosing it and binding it.
const ATTEMPTS: usize = 5;

static ENDPOINT: Mutex<Option<PrometheusEndpoint>> = Mutex::new(None);

/// The running scrape endpoint: `GET http://<addr>/metrics` (any path
/// serves the metrics; `/health` answers `OK`).
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

    /// What a scrape returns now, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The endpoint this process serves, if one was started.
pub fn prometheus_endpoint() -> Option<PrometheusEndpoint> {
    ENDPOINT.lock().clone()
}

/// Installs a Prometheus recorder as the process's [`metrics`] recorder and
/// serves it over HTTP at `addr` (port 0: a free port; see
/// [`PrometheusEndpoint::addr`]), on a thread of its own, until the process
/// exits. `*_seconds` histograms get buckets from 1 ms to 10 min.
///
/// If this process already serves at `addr`, or at any port of `addr`'s IP
/// when `addr`'s port is 0, returns that endpoint. Fails with
/// [`Error::Io`] if `addr` cannot be bound, and with
/// [`Error::MetricsEndpoint`] if the process serves metrics at another
/// address or another `metrics` recorder is installed.
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
    let (bound, runtime, recorder, exporter) = bind(addr)?;
    let handle = recorder.handle();

    // The thread first, so that nothing is installed if it cannot start;
    // it serves once told to, or ends (closing the listener) if not.
    let (go, started) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("gress-metrics-http".into())
        .spawn(move || {
            if started.recv().is_err() {
                return;
            }
            if let Err(e) = runtime.block_on(exporter) {
                tracing::error!(addr = %bound, error = ?e, "the metrics endpoint stopped");
            }
        })
        .map_err(|e| Error::io("starting the metrics endpoint's thread", e))?;
    metrics::set_global_recorder(recorder).map_err(|_| Error::MetricsEndpoint {
        addr,
        reason: "another metrics recorder is installed in this process".into(),
    })?;
    // The thread waits on `started`, so it is there to receive.
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

/// Builds the recorder and an exporter listening at `addr`, with the bound
/// address.
fn bind(
    addr: SocketAddr,
) -> Result<(
    SocketAddr,
    tokio::runtime::Runtime,
    PrometheusRecorder,
    ExporterFuture,
)> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        // The exporter cannot say which port it bound: choose it here (and
        // report a bad address as the I/O error it is), then hand it over.
        let bound = TcpListener::bind(addr)
            .and_then(|probe| probe.local_addr())
            .map_err(|e| Error::io(format!("binding the metrics endpoint to {addr}"), e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the metrics endpoint's runtime", e))?;
        let built = {
            let _in_runtime = runtime.enter();
            PrometheusBuilder::new()
                .with_http_listener(bound)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::build)
        };
        match built {
            Ok((recorder, exporter)) => return Ok((bound, runtime, recorder, exporter)),
            // Taken since it was chosen: choose again.
            Err(BuildError::FailedToCreateHTTPListener(reason)) if addr.port() == 0 => {
                last = reason;
            }
            Err(e) => {
                return Err(Error::MetricsEndpoint {
                    addr,
                    reason: e.to_string().into(),
                });
            }
        }
    }
    Err(Error::MetricsEndpoint {
        addr,
        reason: format!("no free port after {ATTEMPTS} attempts: {last}").into(),
    })
}
