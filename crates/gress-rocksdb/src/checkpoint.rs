//! Turning a checkpoint directory into a database directory.

use std::fs;
use std::path::Path;

use gress_state::fsutil::sync_dir;
use gress_state::{Error, Result};

/// Fills the empty or missing directory `to` with the files of the
/// checkpoint `from`: immutable SST and blob files hard-linked (copied when
/// linking fails, e.g. across file systems), every other file copied,
/// since RocksDB appends to or replaces those. Everything is fsynced.
pub(crate) fn materialize(from: &Path, to: &Path) -> Result<()> {
    let io = |what: String| move |e| Error::io(what, e);
    let meta = fs::metadata(from).map_err(io(format!("reading checkpoint {}", from.display())))?;
    if !meta.is_dir() {
        return Err(Error::invalid_argument(
            "checkpoint",
            format!("{} is not a directory", from.display()),
        ));
    }
    if !from.join("CURRENT").is_file() {
        return Err(Error::invalid_argument(
            "checkpoint",
            format!(
                "{} holds no RocksDB checkpoint (no CURRENT file)",
                from.display()
            ),
        ));
    }
    match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid_config(
                    "path",
                    format!(
                        "{} is not empty; a checkpoint opens into a new directory",
                        to.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
        }
        Err(e) => return Err(Error::io(format!("reading {}", to.display()), e)),
    }
    for entry in fs::read_dir(from).map_err(io(format!("listing {}", from.display())))? {
        let entry = entry.map_err(io(format!("listing {}", from.display())))?;
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        if !entry
            .file_type()
            .map_err(io(format!("reading {}", src.display())))?
            .is_file()
        {
            continue;
        }
        let immutable = name
            .to_str()
            .is_some_and(|n| n.ends_with(".sst") || n.ends_with(".blob"));
        if !(immutable && fs::hard_link(&src, &dst).is_ok()) {
            fs::copy(&src, &dst).map_err(io(format!("copying {}", src.display())))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("syncing {}", dst.display())))?;
        }
    }
    sync_dir(to).map_err(io(format!("syncing {}", to.display())))
}
