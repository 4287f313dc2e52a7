//! Container logs: guests' stdout and stderr written to `DATA/pods/<uid>/logs/<container>/<restart>.log`
//! in the CRI format the kubelet uses (`<RFC3339Nano> <stream> <F|P> <text>`), rotated by size, and
//! read back with kubectl's options (tailLines, sinceSeconds, timestamps, limitBytes, follow).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

pub use wk_shim::log::{ContainerLog, MAX_LINE, MAX_LOG_BYTES};

/// The log directory of one container of a pod.
pub fn container_dir(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("logs").join(container)
}

/// The log file of one run (restart number) of a container.
pub fn run_file(pod_dir: &Path, container: &str, restart: u32) -> PathBuf {
    container_dir(pod_dir, container).join(format!("{restart}.log"))
}

/// A guest's streams into a container's log.
pub trait Streams {
    /// A writer for one stream (`stdout` or `stderr`).
    fn stream(&self, stream: &'static str) -> LogStream;
}

impl Streams for Arc<ContainerLog> {
    fn stream(&self, stream: &'static str) -> LogStream {
        LogStream(Arc::new(Writer {
            log: self.clone(),
            stream,
            partial: Mutex::new(Vec::new()),
        }))
    }
}

/// A guest's stdout or stderr: splits the bytes into lines and records each.
#[derive(Clone)]
pub struct LogStream(Arc<Writer>);

/// One writer of a stream, with the bytes of its line not yet ended; those are recorded as a
/// partial line when its last clone goes.
struct Writer {
    log: Arc<ContainerLog>,
    stream: &'static str,
    partial: Mutex<Vec<u8>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(rest) = self.partial.get_mut() {
            self.log.finish(self.stream, rest);
        }
    }
}

impl LogStream {
    /// The same stream for another writer, with its own unfinished line: instances that run
    /// at once then never splice their lines into each other's.
    #[must_use]
    pub fn fork(&self) -> Self {
        self.0.log.stream(self.0.stream)
    }

    fn write_bytes(&self, buf: &[u8]) {
        let Ok(mut partial) = self.0.partial.lock() else {
            return;
        };
        self.0.log.write(self.0.stream, &mut partial, buf);
    }

    /// Records one whole line of wk's own about the container (a line the guest did not write).
    pub fn line(&self, text: &str) {
        self.0.log.record(self.0.stream, 'F', text.as_bytes());
    }

    /// Writes out a last line that had no newline, as a partial record (so readers show it
    /// without one, as the guest wrote it).
    pub fn finish(&self) {
        if let Ok(mut partial) = self.0.partial.lock() {
            self.0.log.finish(self.0.stream, &mut partial);
        }
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Appending to a local file is short; doing it inline keeps the guest's output ordered.
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// What `GET pods/{name}/log` asked for.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// One parsed CRI record.
struct Record {
    time: String,
    text: Vec<u8>,
    partial: bool,
}

fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        time,
        text,
        partial: tag == b"P",
    })
}

/// Renders the records of the log files (oldest first) as kubectl shows them.
///
/// # Errors
/// When a file cannot be read.
pub fn render(files: &[PathBuf], query: &LogQuery) -> io::Result<Vec<u8>> {
    let since = query
        .since_seconds
        .map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s));
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for path in files {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for raw in BufReader::new(file).split(b'\n') {
            let raw = raw?;
            let Some(rec) = parse_record(&raw) else {
                continue;
            };
            if let Some(since) = since
                && rec.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
            {
                continue;
            }
            if pending.is_empty() && query.timestamps {
                pending.extend_from_slice(rec.time.as_bytes());
                pending.push(b' ');
            }
            pending.extend_from_slice(&rec.text);
            if !rec.partial {
                pending.push(b'\n');
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        lines.push(pending);
    }
    if let Some(n) = query.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(limit) = query.limit_bytes {
        out.truncate(limit);
    }
    Ok(out)
}

/// The files of one run, oldest first (the rotated one, then the current one).
pub fn run_files(current: &Path) -> Vec<PathBuf> {
    vec![current.with_extension("log.1"), current.to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_recorded_in_cri_format_and_rendered_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = ContainerLog::create(path.clone()).unwrap();
        let out = log.stream("stdout");
        let err = log.stream("stderr");
        out.write_bytes(b"hello\nwor");
        err.write_bytes(b"oops\n");
        out.write_bytes(b"ld\nlast");
        out.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.ends_with(" stdout F hello"), "{text}");
        assert!(text.contains(" stderr F oops\n"), "{text}");

        let all = render(&run_files(&path), &LogQuery::default()).unwrap();
        assert_eq!(String::from_utf8(all).unwrap(), "hello\noops\nworld\nlast");
        let tail = LogQuery {
            tail_lines: Some(2),
            ..LogQuery::default()
        };
        assert_eq!(render(&run_files(&path), &tail).unwrap(), b"world\nlast");
        let stamped = LogQuery {
            timestamps: true,
            limit_bytes: Some(40),
            ..LogQuery::default()
        };
        let s = String::from_utf8(render(&run_files(&path), &stamped).unwrap()).unwrap();
        assert!(s.starts_with("20") && s.contains("Z hello\n"), "{s}");
        assert_eq!(s.len(), 40);
    }

    #[test]
    fn long_lines_are_split_into_partial_records_and_joined_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = ContainerLog::create(path.clone()).unwrap();
        let out = log.stream("stdout");
        let long = vec![b'x'; MAX_LINE + 10];
        out.write_bytes(&long);
        out.write_bytes(b"\n");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().next().unwrap().contains(" stdout P "));
        let all = render(&run_files(&path), &LogQuery::default()).unwrap();
        assert_eq!(all.len(), MAX_LINE + 11);
    }

    #[test]
    fn a_full_log_is_rotated_once_and_read_across_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = ContainerLog::with_limit(path.clone(), 400).unwrap();
        let out = log.stream("stdout");
        for i in 0..30 {
            out.write_bytes(format!("line {i:02}\n").as_bytes());
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(path.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(current <= 400 && rotated <= 400, "{current} {rotated}");
        let all =
            String::from_utf8(render(&run_files(&path), &LogQuery::default()).unwrap()).unwrap();
        let lines: Vec<&str> = all.lines().collect();
        // Only one rotated file is kept: the oldest lines are gone, the rest are in order.
        assert_eq!(lines.last(), Some(&"line 29"));
        assert!(!lines.contains(&"line 00"), "{all}");
        let first: usize = lines[0][5..].parse().unwrap();
        let expected: Vec<String> = (first..30).map(|i| format!("line {i:02}")).collect();
        assert_eq!(lines, expected);
        let tail = LogQuery {
            tail_lines: Some(3),
            ..LogQuery::default()
        };
        assert_eq!(
            render(&run_files(&path), &tail).unwrap(),
            b"line 27\nline 28\nline 29\n"
        );
    }
}
