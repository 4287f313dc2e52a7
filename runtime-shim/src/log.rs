//! Container log files in the CRI format the kubelet writes
//! (`<RFC3339Nano> <stream> <F|P> <text>`), rotated by size. The agent writes its Wasm
//! containers' logs with this, and `wk-shim` its Linux containers', so `kubectl logs` reads
//! both the same way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A log file grows to this size before it is rotated (the kubelet's containerLogMaxSize).
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// A partial line is written as a `P` record once it is this long.
pub const MAX_LINE: usize = 16 * 1024;

/// One container run's log file, shared by its stdout and stderr.
pub struct ContainerLog {
    path: PathBuf,
    /// Opened at the first record, so a container that writes nothing holds no descriptor.
    file: Mutex<(Option<File>, u64)>,
    max_bytes: u64,
}

impl ContainerLog {
    /// Creates (truncates) the log file of a run.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: PathBuf) -> io::Result<Arc<Self>> {
        Self::with_limit(path, MAX_LOG_BYTES)
    }

    /// As [`ContainerLog::create`], rotating at `max_bytes` rather than [`MAX_LOG_BYTES`].
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn with_limit(path: PathBuf, max_bytes: u64) -> io::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(&path)?;
        Ok(Arc::new(Self {
            path,
            file: Mutex::new((None, 0)),
            max_bytes,
        }))
    }

    /// Appends one record; rotates the file when it is full.
    pub fn record(&self, stream: &str, tag: char, text: &[u8]) {
        let now = jiff::Timestamp::now();
        let mut line = Vec::with_capacity(text.len() + 48);
        let _ = write!(
            line,
            "{} {stream} {tag} ",
            now.strftime("%Y-%m-%dT%H:%M:%S.%9fZ")
        );
        line.extend_from_slice(text);
        line.push(b'\n');
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        let (file, size) = &mut *guard;
        if *size > 0 && *size + line.len() as u64 > self.max_bytes {
            let rotated = self.path.with_extension("log.1");
            if std::fs::rename(&self.path, &rotated).is_ok()
                && let Ok(fresh) = File::create(&self.path)
            {
                *file = Some(fresh);
                *size = 0;
            }
        }
        if file.is_none() {
            *file = OpenOptions::new().append(true).open(&self.path).ok();
        }
        if let Some(f) = file
            && f.write_all(&line).is_ok()
        {
            *size += line.len() as u64;
        }
    }

    /// Records a stream's last line that had no newline, as a partial record (so readers
    /// show it without one, as it was written), and empties `partial`.
    pub fn finish(&self, stream: &str, partial: &mut Vec<u8>) {
        if !partial.is_empty() {
            self.record(stream, 'P', &std::mem::take(partial));
        }
    }

    /// Records what a stream wrote, line by line: `partial` holds the stream's line not yet
    /// ended, and is recorded as `P` records once it reaches [`MAX_LINE`].
    pub fn write(&self, stream: &str, partial: &mut Vec<u8>, buf: &[u8]) {
        partial.extend_from_slice(buf);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            self.record(stream, 'F', &line[..line.len() - 1]);
        }
        while partial.len() >= MAX_LINE {
            let chunk: Vec<u8> = partial.drain(..MAX_LINE).collect();
            self.record(stream, 'P', &chunk);
        }
    }
}
