//! S3-compatible object storage (placeholder until the implementation lands).
