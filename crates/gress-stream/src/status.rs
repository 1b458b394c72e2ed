//! The job's status on the metrics endpoint: `GET /status` answers the
//! [`JobStatus`](crate::JobStatus) of the job running in this process, as
//! JSON.

use std::sync::Arc;

use crate::config::JobConfig;
use crate::control::{Control, JobStatus};

/// `control`'s status of the job `config` runs.
pub(crate) fn status_of(control: &Control, config: &JobConfig) -> JobStatus {
    control.status(
        &config.job_id,
        (config.process, config.hosts.len().max(1)),
        config.total_workers(),
    )
}

/// Registers `config`'s job as what `/status` answers (the newest job
/// started in the process wins).
pub(crate) fn serve(config: &Arc<JobConfig>) {
    let config = Arc::clone(config);
    gress_state::telemetry::set_status_source(move || {
        let status = status_of(&config.control, &config);
        serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
}
