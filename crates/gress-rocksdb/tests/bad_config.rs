//! Invalid configurations are typed errors naming the field or path; none
//! panics and none creates a database.

use std::time::Duration;

use gress_rocksdb::{RocksDbConfig, RocksDbStateBackend};
use gress_state::Error;

#[test]
fn invalid_fields_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    type Edit = fn(&mut RocksDbConfig);
    let cases: Vec<(&str, Edit)> = vec![
        ("write_buffer_size", |c| c.write_buffer_size = 0),
        ("write_buffer_size", |c| c.write_buffer_size = usize::MAX),
        ("max_write_buffer_number", |c| c.max_write_buffer_number = 0),
        ("max_open_files", |c| c.max_open_files = 3),
        ("block_size", |c| c.block_size = 0),
        ("block_cache_size", |c| c.block_cache_size = usize::MAX),
        ("bloom_filter_bits", |c| c.bloom_filter_bits = f64::NAN),
        ("bloom_filter_bits", |c| c.bloom_filter_bits = -1.0),
        ("max_background_jobs", |c| c.max_background_jobs = 0),
        ("prefix_len", |c| c.prefix_len = Some(0)),
        ("default_ttl", |c| {
            c.ttl_enabled = true;
            c.default_ttl = Duration::ZERO;
        }),
        ("ttl_compaction_grace", |c| {
            c.ttl_compaction_grace = Duration::from_secs(31 * 86_400)
        }),
        ("block_cache_size", |c| {
            c.bound_memory = true;
            c.block_cache_size = 1 << 20;
        }),
        ("path", |c| c.path = "".into()),
    ];
    for (field, edit) in cases {
        let mut config = RocksDbConfig::new(&path);
        edit(&mut config);
        match RocksDbStateBackend::open(config) {
            Err(Error::InvalidConfig { field: f, reason }) => {
                assert_eq!(f, field, "reported {f}: {reason}");
            }
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
        assert!(
            !path.exists(),
            "{field}: a rejected config created the database"
        );
    }
}

#[test]
fn path_that_is_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    match RocksDbStateBackend::open(RocksDbConfig::new(&file)) {
        Err(Error::InvalidConfig { field: "path", .. }) => {}
        other => panic!("expected InvalidConfig(path), got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).expect("read file"), b"x");
}

#[test]
fn missing_path_without_create_if_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = RocksDbConfig::new(dir.path().join("absent"));
    config.create_if_missing = false;
    match RocksDbStateBackend::open(config) {
        Err(Error::InvalidConfig { field: "path", .. }) => {}
        other => panic!("expected InvalidConfig(path), got {other:?}"),
    }
    assert!(!dir.path().join("absent").exists());
}

#[test]
fn checkpoint_paths_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_a_checkpoint = dir.path().join("empty");
    std::fs::create_dir(&not_a_checkpoint).expect("mkdir");
    let target = RocksDbConfig::new(dir.path().join("target"));
    match RocksDbStateBackend::open_checkpoint(&not_a_checkpoint, target.clone()) {
        Err(Error::InvalidArgument {
            name: "checkpoint", ..
        }) => {}
        other => panic!("expected InvalidArgument(checkpoint), got {other:?}"),
    }
    match RocksDbStateBackend::open_checkpoint(&dir.path().join("missing"), target) {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Io(NotFound), got {other:?}"),
    }
}
