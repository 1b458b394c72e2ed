//! The job's status on the metrics endpoint: `GET /status` answers the
//! [`JobStatus`](crate::JobStatus) of the job running in this process, as
//! JSON.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::config::{CheckpointStorage, JobConfig};
use crate::control::{Control, JobStatus, Mode};

/// `control`'s status of the job `config` runs.
pub(crate) fn status_of(control: &Control, config: &JobConfig) -> JobStatus {
    control.status(
        &config.job_id,
        (config.process, config.hosts.len().max(1)),
        config.total_workers(),
    )
}

/// Registers `config`'s job as what `/status` answers (the newest job
/// started in the process wins), and with [`JobConfig::remote_control`]
/// what `POST /job/stop` and `POST /job/drain` do.
pub(crate) fn serve(config: &Arc<JobConfig>) {
    let status_config = Arc::clone(config);
    gress_state::telemetry::set_status_source(move || {
        let status = status_of(&status_config.control, &status_config);
        serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    let control: Option<gress_state::telemetry::ControlSource> = if config.remote_control {
        let config = Arc::clone(config);
        Some(Arc::new(move |path: &str, body: &[u8]| {
            let (code, doc) = control(&config, path, body);
            (code, format!("{doc}\n"))
        }))
    } else {
        None
    };
    gress_state::telemetry::set_control_source(control);
}

/// What the body of `POST /job/stop` may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    /// Where to write a savepoint once the job stopped.
    savepoint: Option<String>,
}

/// `POST /job/stop` (with an optional savepoint) and `POST /job/drain`:
/// the request is taken, the answer says so (202), and the job stops as
/// [`JobHandle::stop`](crate::JobHandle::stop) would; `/status` tells when
/// it has.
fn control(config: &JobConfig, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let refuse = |code: u16, why: String| (code, json!({ "error": why }));
    let control = &config.control;
    if control.mode() != Mode::Run {
        return refuse(409, "the job is already stopping".into());
    }
    match path {
        "/job/stop" => {
            let request: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
                StopRequest::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => {
                        return refuse(
                            400,
                            format!("the body is not {{\"savepoint\": \"<location>\"}}: {e}"),
                        );
                    }
                }
            };
            if let Some(text) = &request.savepoint {
                if config.checkpoints.is_none() {
                    return refuse(
                        400,
                        "a savepoint is of a committed epoch: the job has no checkpoints".into(),
                    );
                }
                let location = match CheckpointStorage::from_url(text)
                    .and_then(|l| crate::savepoint::check_unused(&l).map(|()| l))
                {
                    Ok(l) => l,
                    Err(e) => return refuse(400, e.to_string()),
                };
                control.ask_savepoint(location);
            }
            control.ask(Mode::Stop);
            tracing::info!(job = %config.job_id, savepoint = ?request.savepoint, "asked to stop through the metrics endpoint");
            (
                202,
                json!({ "accepted": "stop", "job_id": config.job_id, "savepoint": request.savepoint }),
            )
        }
        "/job/drain" => {
            control.ask(Mode::Drain);
            tracing::info!(job = %config.job_id, "asked to drain through the metrics endpoint");
            (202, json!({ "accepted": "drain", "job_id": config.job_id }))
        }
        other => refuse(
            404,
            format!("{other}: not here; try /job/stop or /job/drain"),
        ),
    }
}
