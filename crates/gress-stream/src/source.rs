//! Replayable, partitioned sources.
//!
//! A source has a fixed number of partitions; partition `p` is read by
//! worker `p % workers`. A reader opens a partition at an offset and reads
//! onward; the offset of what was read is recorded with every checkpoint,
//! so recovery reopens each partition exactly where the committed state
//! left it.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::data::Data;
use crate::error::{Error, Result};

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Records were read (up to the maximum); there may be more.
    Ready,
    /// Nothing is available now; poll again later.
    Idle,
    /// The partition has ended; nothing more will come.
    End,
}

/// One partition being read.
pub trait PartitionReader<T>: 'static {
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> Result<Poll>;
    /// The offset of the next record: reopening at it resumes right here.
    fn offset(&self) -> u64;
    /// Told that the job committed an epoch that ended at `offset` in this
    /// partition: what precedes it is in committed state and will not be
    /// read again. For reporting (a Kafka consumer group's offsets, for
    /// monitoring): the job's checkpoints, not this, say where a recovery
    /// resumes. Best effort: a reader logs what fails, the job goes on.
    fn committed(&mut self, offset: u64) {
        let _ = offset;
    }
}

/// A replayable source of partitioned records.
pub trait Source: 'static {
    /// The records.
    type Record: Data;
    /// The number of partitions (fixed for the life of a job).
    fn partitions(&self) -> usize;
    /// Opens `partition` at `offset` (0 for its beginning).
    fn open(
        &mut self,
        partition: usize,
        offset: u64,
    ) -> Result<Box<dyn PartitionReader<Self::Record>>>;
}

/// Records made by a function of (partition, offset): deterministic, so
/// any replay reads the same records. Finite (`per_partition` records per
/// partition) or endless.
pub struct GeneratorSource<T> {
    partitions: usize,
    per_partition: Option<u64>,
    /// Records per second per partition, at most.
    rate: Option<f64>,
    make: Arc<dyn Fn(usize, u64) -> T>,
}

impl<T> std::fmt::Debug for GeneratorSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorSource")
            .field("partitions", &self.partitions)
            .field("per_partition", &self.per_partition)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl<T: Data> GeneratorSource<T> {
    /// `per_partition` records (`None`: endless) in each of `partitions`,
    /// record `i` of partition `p` being `make(p, i)`.
    pub fn new(
        partitions: usize,
        per_partition: Option<u64>,
        make: impl Fn(usize, u64) -> T + 'static,
    ) -> Self {
        GeneratorSource {
            partitions,
            per_partition,
            rate: None,
            make: Arc::new(make),
        }
    }

    /// Makes each partition produce at most `per_second` records per
    /// second from the time it is opened (an offered load: a partition
    /// that falls behind catches up as fast as it can). Refused unless
    /// positive and finite.
    pub fn with_rate(mut self, per_second: f64) -> Result<Self> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(Error::invalid(
                "generator source",
                format!("a rate must be a positive number of records per second, not {per_second}"),
            ));
        }
        self.rate = Some(per_second);
        Ok(self)
    }
}

struct GeneratorReader<T> {
    partition: usize,
    next: u64,
    end: Option<u64>,
    /// With a rate: when the partition was opened, and its offset then.
    paced: Option<(f64, std::time::Instant, u64)>,
    make: Arc<dyn Fn(usize, u64) -> T>,
}

impl<T: Data> PartitionReader<T> for GeneratorReader<T> {
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> Result<Poll> {
        let mut max = max as u64;
        if let Some((rate, opened, first)) = self.paced {
            let due = (opened.elapsed().as_secs_f64() * rate) as u64;
            let allowed = (first + due).saturating_sub(self.next);
            if allowed == 0 && self.end.is_none_or(|end| self.next < end) {
                return Ok(Poll::Idle);
            }
            max = max.min(allowed);
        }
        let until = match self.end {
            Some(end) => end.min(self.next + max),
            None => self.next + max,
        };
        out.extend((self.next..until).map(|i| (self.make)(self.partition, i)));
        self.next = until;
        Ok(match self.end {
            Some(end) if self.next >= end => Poll::End,
            _ => Poll::Ready,
        })
    }

    fn offset(&self) -> u64 {
        self.next
    }
}

impl<T: Data> Source for GeneratorSource<T> {
    type Record = T;

    fn partitions(&self) -> usize {
        self.partitions
    }

    fn open(&mut self, partition: usize, offset: u64) -> Result<Box<dyn PartitionReader<T>>> {
        Ok(Box::new(GeneratorReader {
            partition,
            next: offset,
            end: self.per_partition,
            paced: self
                .rate
                .map(|rate| (rate, std::time::Instant::now(), offset)),
            make: Arc::clone(&self.make),
        }))
    }
}

/// Parses one line into a record.
type Parse<T> = Arc<dyn Fn(&str) -> std::result::Result<T, String>>;

/// Lines of files, one partition per file, the offset being the byte
/// position: each line parsed by a function (for example JSON). A file is
/// read to its end as it is when reached; a last line without a line break
/// is a line. A file shorter than the offset a checkpoint recorded for it
/// (truncated or replaced since) is an error, not a silent restart.
pub struct FileSource<T> {
    files: Vec<PathBuf>,
    parse: Parse<T>,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for FileSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl FileSource<String> {
    /// Each line as a string (without its line break).
    pub fn lines(files: Vec<PathBuf>) -> Self {
        FileSource {
            files,
            parse: Arc::new(|line| Ok(line.to_string())),
            _t: PhantomData,
        }
    }
}

impl<T: Data + DeserializeOwned> FileSource<T> {
    /// Each line as one JSON value.
    pub fn json_lines(files: Vec<PathBuf>) -> Self {
        FileSource {
            files,
            parse: Arc::new(|line| serde_json::from_str(line).map_err(|e| e.to_string())),
            _t: PhantomData,
        }
    }
}

struct FileReader<T> {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    line: String,
    parse: Parse<T>,
}

impl<T: Data> PartitionReader<T> for FileReader<T> {
    fn poll(&mut self, max: usize, out: &mut Vec<T>) -> Result<Poll> {
        for _ in 0..max {
            self.line.clear();
            let n = self
                .input
                .read_line(&mut self.line)
                .map_err(|e| Error::Source {
                    source_name: self.path.display().to_string(),
                    reason: format!("reading at byte {}: {e}", self.offset),
                })?;
            if n == 0 {
                return Ok(Poll::End);
            }
            // A line without its line break is the file's last.
            let text = self.line.trim_end_matches(['\n', '\r']);
            if !text.is_empty() {
                let record = (self.parse)(text).map_err(|reason| Error::Source {
                    source_name: self.path.display().to_string(),
                    reason: format!("line at byte {}: {reason}", self.offset),
                })?;
                out.push(record);
            }
            self.offset += n as u64;
        }
        Ok(Poll::Ready)
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

impl<T: Data> Source for FileSource<T> {
    type Record = T;

    fn partitions(&self) -> usize {
        self.files.len()
    }

    fn open(&mut self, partition: usize, offset: u64) -> Result<Box<dyn PartitionReader<T>>> {
        let path = self
            .files
            .get(partition)
            .cloned()
            .ok_or_else(|| Error::Source {
                source_name: "files".into(),
                reason: format!("no partition {partition}"),
            })?;
        let fail = |e: std::io::Error| Error::Source {
            source_name: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut file = File::open(&path).map_err(fail)?;
        let len = file.metadata().map_err(fail)?.len();
        if len < offset {
            return Err(Error::Source {
                source_name: path.display().to_string(),
                reason: format!(
                    "the file has {len} bytes, fewer than the {offset} the job has already read: \
                     it was truncated or replaced since"
                ),
            });
        }
        file.seek(SeekFrom::Start(offset)).map_err(fail)?;
        Ok(Box::new(FileReader {
            path: path.clone(),
            input: BufReader::with_capacity(1 << 16, file),
            offset,
            line: String::new(),
            parse: Arc::clone(&self.parse),
        }))
    }
}
