//! Following the files of one flow: finding them by glob, reading their whole
//! lines, and keeping track of each file's content across rotation.
//!
//! A *lineage* is one file's content as it moves: it is found by device and
//! inode (so a rename keeps it), and checked against its *head* (its first
//! bytes, up to 1 KiB). When the head no longer matches or the file shrank,
//! the file was truncated (copytruncate); if another file the glob matches
//! starts with the same head, it is the copy, and the lineage continues there
//! from the same offset while the truncated file starts a new lineage at 0.
//! A renamed file keeps being read through its open descriptor to its end,
//! so rename-and-create loses nothing either. Checkpoints name lineages the
//! same way, so a restart resumes each at its acknowledged offset.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::checkpoint::FileCheckpoint;
use super::config::StartPosition;

/// How many leading bytes identify a file's content.
const HEAD_MAX: usize = 1024;
/// Bytes read per system call.
const CHUNK: usize = 256 * 1024;
/// A line longer than this is sent in pieces of this size (weir's record limit is 1 MiB).
pub const MAX_LINE: usize = 1 << 20;
/// How long a new file that looks like a copy of a followed file waits for
/// that file to be truncated before it is read as a file of its own.
const COPY_PATIENCE: Duration = Duration::from_secs(10);
/// A file no longer matched by the glob (renamed away or deleted) is read to
/// its end and closed once it has not grown for this long.
const ORPHAN_IDLE: Duration = Duration::from_secs(5);
/// The least one file reads in one poll when many share the budget.
const MIN_SHARE: usize = 64 << 10;

/// One whole line of a file (without its line ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The lineage (file content) it comes from.
    pub lineage: u64,
    /// The offset just past its newline: where a checkpoint after it points.
    pub end: u64,
    /// The line's bytes.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Lineage {
    id: u64,
    path: PathBuf,
    /// Where it was first found: the name its records' source is made of.
    first_path: PathBuf,
    dev: u64,
    ino: u64,
    file: File,
    head: Vec<u8>,
    /// Lines before this offset were handed out.
    read: u64,
    /// Lines before this offset were acknowledged.
    acked: u64,
    truncated: bool,
    /// Matched by the glob in the latest scan.
    seen: bool,
    size: u64,
    changed: Instant,
}

impl Lineage {
    /// Checks the file still holds this lineage's content, and extends the head.
    fn verify(&mut self, now: Instant) -> std::io::Result<bool> {
        let size = self.file.metadata()?.len();
        if size != self.size {
            self.size = size;
            self.changed = now;
        }
        if size < self.read {
            return Ok(false);
        }
        let prefix = read_head(&self.file)?;
        if !prefix.starts_with(&self.head) {
            return Ok(false);
        }
        if prefix.len() > self.head.len() {
            self.head = prefix;
        }
        Ok(true)
    }

    /// Reads whole lines from `read` on, at most about `budget` bytes of them.
    fn read_lines(&mut self, budget: &mut usize, now: Instant, out: &mut Vec<Line>) -> std::io::Result<()> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut carry: Vec<u8> = Vec::new();
        let mut pos = self.read;
        let mut consumed = self.read;
        let mut at_end = false;
        while *budget > 0 {
            let n = self.file.read_at(&mut buf, pos)?;
            if n == 0 {
                at_end = true;
                break;
            }
            let chunk = &buf[..n];
            let mut start = 0;
            for (i, _) in chunk.iter().enumerate().filter(|(_, b)| **b == b'\n') {
                let mut data = std::mem::take(&mut carry);
                data.extend_from_slice(&chunk[start..i]);
                if data.last() == Some(&b'\r') {
                    data.pop();
                }
                consumed = pos + i as u64 + 1;
                *budget = budget.saturating_sub(data.len() + 1);
                lines.push(Line { lineage: self.id, end: consumed, data });
                start = i + 1;
            }
            carry.extend_from_slice(&chunk[start..]);
            pos += n as u64;
            if carry.len() >= MAX_LINE {
                tracing::warn!(file = %self.path.display(), "a line is longer than 1 MiB; sending it in pieces");
                consumed = pos;
                *budget = budget.saturating_sub(carry.len());
                lines.push(Line { lineage: self.id, end: consumed, data: std::mem::take(&mut carry) });
            }
        }
        // What was read is this lineage's only if the file was not truncated meanwhile.
        if !self.verify(now)? {
            self.truncated = true;
            return Ok(());
        }
        // A file renamed or deleted away gets no newline any more: its last piece is a line.
        if !self.seen && at_end && !carry.is_empty() && now.duration_since(self.changed) >= ORPHAN_IDLE {
            consumed = pos;
            lines.push(Line { lineage: self.id, end: consumed, data: carry });
        }
        self.read = consumed;
        out.extend(lines);
        Ok(())
    }

    fn checkpoint(&self) -> FileCheckpoint {
        FileCheckpoint {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
            head_len: self.head.len() as u64,
            head: hex(&self.head),
            offset: self.acked,
        }
    }
}

fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut len = 0;
    while len < HEAD_MAX {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn head_matches(prefix: &[u8], saved: &FileCheckpoint) -> bool {
    usize::try_from(saved.head_len)
        .ok()
        .filter(|len| *len > 0 && *len <= prefix.len())
        .is_some_and(|len| hex(&prefix[..len]) == saved.head)
}

/// Follows the files matching one glob.
#[derive(Debug)]
pub struct Tailer {
    pattern: String,
    start: StartPosition,
    lineages: Vec<Lineage>,
    /// Checkpoints from the last run, claimed by the first scan.
    saved: Vec<FileCheckpoint>,
    next_id: u64,
    first_scan: bool,
    /// New files that look like copies of followed ones, since when.
    waiting: HashMap<(u64, u64), Instant>,
}

impl Tailer {
    /// Follows `pattern`, resuming from `saved` checkpoints.
    pub fn new(pattern: String, start: StartPosition, saved: Vec<FileCheckpoint>) -> Self {
        Self { pattern, start, lineages: Vec::new(), saved, next_id: 1, first_scan: true, waiting: HashMap::new() }
    }

    fn add(&mut self, path: PathBuf, file: File, head: Vec<u8>, offset: u64, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let (dev, ino, size) = file.metadata().map(|m| (m.dev(), m.ino(), m.len())).unwrap_or_default();
        self.lineages.push(Lineage {
            id,
            first_path: path.clone(),
            path,
            dev,
            ino,
            file,
            head,
            read: offset,
            acked: offset,
            truncated: false,
            seen: true,
            size,
            changed: now,
        });
        id
    }

    /// Looks at the files once: notices rotation and new files, and returns
    /// the whole lines written since the last poll (about `budget` bytes at most, shared
    /// among the files, at least 64 KiB each).
    pub fn poll(&mut self, budget: usize, now: Instant) -> Vec<Line> {
        for l in &mut self.lineages {
            l.truncated = !l.verify(now).unwrap_or(true);
        }
        self.scan(now);
        // Truncated files whose content was not found elsewhere start over.
        let mut i = 0;
        while i < self.lineages.len() {
            if self.lineages[i].truncated {
                let l = self.lineages.remove(i);
                tracing::info!(file = %l.path.display(), "file was truncated; reading it again from its start");
                let head = read_head(&l.file).unwrap_or_default();
                self.add(l.path, l.file, head, 0, now);
            } else {
                i += 1;
            }
        }
        self.lineages.sort_by_key(|l| l.id);
        // Each file gets its share of the budget, so a backlog of many files is read
        // side by side (and can be sent in time order), not one file after another.
        let share = (budget / self.lineages.len().max(1)).max(MIN_SHARE.min(budget)).max(1);
        let mut out = Vec::new();
        for l in &mut self.lineages {
            let mut budget = share;
            if let Err(e) = l.read_lines(&mut budget, now, &mut out) {
                tracing::warn!(file = %l.path.display(), error = %e, "cannot read file; will retry");
            }
        }
        // Files gone from the glob are closed once read, acknowledged and idle.
        self.lineages.retain(|l| {
            let done = !l.seen && !l.truncated && l.acked == l.read && l.read >= l.size;
            let keep = !(done && now.duration_since(l.changed) >= ORPHAN_IDLE);
            if !keep {
                tracing::debug!(file = %l.path.display(), "finished a file that left the glob");
            }
            keep
        });
        out
    }

    fn scan(&mut self, now: Instant) {
        let paths = match glob::glob(&self.pattern) {
            Ok(paths) => paths.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "bad glob");
                Vec::new()
            }
        };
        for l in &mut self.lineages {
            l.seen = false;
        }
        let mut fresh = Vec::new();
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !meta.is_file() {
                continue;
            }
            match self.lineages.iter_mut().find(|l| l.dev == meta.dev() && l.ino == meta.ino()) {
                Some(l) => {
                    l.seen = true;
                    l.path = path;
                }
                None => fresh.push(path),
            }
        }
        let mut still_waiting = HashMap::new();
        for path in fresh {
            if let Some(key) = self.adopt(path, now) {
                let since = self.waiting.get(&key).copied().unwrap_or(now);
                still_waiting.insert(key, since);
            }
        }
        self.waiting = still_waiting;
        self.first_scan = false;
        self.saved.clear();
    }

    /// Starts following a file the glob matched for the first time; returns
    /// its identity if it must wait (it may be a copy still being made).
    fn adopt(&mut self, path: PathBuf, now: Instant) -> Option<(u64, u64)> {
        let file = File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        let (dev, ino, size) = (meta.dev(), meta.ino(), meta.len());
        if self.lineages.iter().any(|l| l.dev == dev && l.ino == ino) {
            return None;
        }
        let prefix = read_head(&file).ok()?;
        // Nothing to send yet; an empty file may also be a copy about to be written.
        if prefix.is_empty() {
            return None;
        }
        // The same file as in the last run.
        if let Some(i) =
            self.saved.iter().position(|s| s.dev == dev && s.ino == ino && head_matches(&prefix, s) && s.offset <= size)
        {
            let saved = self.saved.remove(i);
            self.add(path, file, prefix, saved.offset, now);
            return None;
        }
        // The copy of a file that was truncated (copytruncate): its content continues here.
        if let Some(l) =
            self.lineages.iter_mut().find(|l| l.truncated && !l.head.is_empty() && prefix.starts_with(&l.head))
        {
            tracing::info!(from = %l.path.display(), to = %path.display(), "file was copied and truncated; following the copy");
            let old_file = std::mem::replace(&mut l.file, file);
            let old_path = std::mem::replace(&mut l.path, path);
            l.dev = dev;
            l.ino = ino;
            l.size = size;
            l.truncated = false;
            l.seen = true;
            let head = read_head(&old_file).unwrap_or_default();
            self.add(old_path, old_file, head, 0, now);
            return None;
        }
        // Copied and truncated while the agent was stopped.
        if let Some(i) = self.saved.iter().position(|s| head_matches(&prefix, s) && s.offset <= size) {
            let saved = self.saved.remove(i);
            self.add(path, file, prefix, saved.offset, now);
            return None;
        }
        // A copy of a followed file (truncation may come next), or a copy being written.
        let copy_like = self
            .lineages
            .iter()
            .any(|l| !l.head.is_empty() && (prefix.starts_with(&l.head) || l.head.starts_with(&prefix)));
        if copy_like && now.duration_since(self.waiting.get(&(dev, ino)).copied().unwrap_or(now)) < COPY_PATIENCE {
            return Some((dev, ino));
        }
        // A file known from the last run whose content was replaced is read whole.
        let known = self.saved.iter().any(|s| s.dev == dev && s.ino == ino);
        let offset = if self.first_scan && !known && self.start == StartPosition::End { size } else { 0 };
        self.add(path, file, prefix, offset, now);
        None
    }

    /// Where `lineage` was first found (it keeps this name when the file is rotated).
    pub fn first_path(&self, lineage: u64) -> Option<&Path> {
        self.lineages.iter().find(|l| l.id == lineage).map(|l| l.first_path.as_path())
    }

    /// Records that lines of `lineage` up to `end` were acknowledged.
    pub fn ack(&mut self, lineage: u64, end: u64) {
        if let Some(l) = self.lineages.iter_mut().find(|l| l.id == lineage) {
            l.acked = l.acked.max(end);
        }
    }

    /// The acknowledged position of every followed file.
    pub fn checkpoints(&self) -> Vec<FileCheckpoint> {
        self.lineages.iter().map(Lineage::checkpoint).collect()
    }

    /// How many files are followed.
    pub fn files(&self) -> usize {
        self.lineages.len()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| String::from_utf8_lossy(&l.data).into_owned()).collect()
    }

    fn poll(t: &mut Tailer) -> Vec<String> {
        let lines = t.poll(usize::MAX, Instant::now());
        for l in &lines {
            t.ack(l.lineage, l.end);
        }
        texts(&lines)
    }

    fn tailer(dir: &Path, glob: &str) -> Tailer {
        Tailer::new(dir.join(glob).to_string_lossy().into_owned(), StartPosition::Beginning, Vec::new())
    }

    #[test]
    fn a_partial_last_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "one\r\ntw");
        let mut t = tailer(dir.path(), "*.log");
        assert_eq!(poll(&mut t), ["one"]);
        assert_eq!(poll(&mut t), Vec::<String>::new());
        append(&log, "o\nthree");
        let lines = t.poll(usize::MAX, Instant::now());
        assert_eq!(texts(&lines), ["two"]);
        assert_eq!(lines[0].end, 9);
    }

    #[test]
    fn start_end_skips_what_is_there_at_startup_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        append(&dir.path().join("a.log"), "old\n");
        let mut t = Tailer::new(dir.path().join("*.log").to_string_lossy().into(), StartPosition::End, Vec::new());
        assert!(poll(&mut t).is_empty());
        append(&dir.path().join("a.log"), "new\n");
        append(&dir.path().join("b.log"), "b1\n");
        assert_eq!(poll(&mut t), ["new", "b1"]);
    }

    #[test]
    fn rename_and_create_finishes_the_old_file_then_follows_the_new_one() {
        for glob in ["app.log", "app.log*"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("app.log");
            append(&log, "1\n2\n");
            let mut t = tailer(dir.path(), glob);
            assert_eq!(poll(&mut t), ["1", "2"]);
            append(&log, "3\n");
            std::fs::rename(&log, dir.path().join("app.log.1")).expect("rotate");
            append(&log, "4\n");
            assert_eq!(poll(&mut t), ["3", "4"], "{glob}");
            append(&log, "5\n");
            assert_eq!(poll(&mut t), ["5"], "{glob}");
        }
    }

    #[test]
    fn copytruncate_continues_in_the_copy_and_restarts_the_original() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "1\n2\n");
        let mut t = tailer(dir.path(), "app.log*");
        assert_eq!(poll(&mut t), ["1", "2"]);
        append(&log, "3\n");
        std::fs::copy(&log, dir.path().join("app.log.1")).expect("copy");
        std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(0)).expect("truncate");
        append(&log, "4 is longer\n");
        assert_eq!(poll(&mut t), ["3", "4 is longer"]);
        append(&log, "5\n");
        assert_eq!(poll(&mut t), ["5"]);
        assert_eq!(t.files(), 2);

        // Seen copy first, truncation only at the next look: the copy waits, nothing is sent twice.
        append(&log, "6\n");
        assert_eq!(poll(&mut t), ["6"]);
        std::fs::copy(&log, dir.path().join("app.log.2")).expect("copy");
        assert_eq!(poll(&mut t), Vec::<String>::new());
        std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(0)).expect("truncate");
        append(&log, "7\n");
        assert_eq!(poll(&mut t), ["7"]);
    }

    #[test]
    fn truncation_without_a_copy_restarts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "first line\n");
        let mut t = tailer(dir.path(), "app.log");
        assert_eq!(poll(&mut t), ["first line"]);
        std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(0)).expect("truncate");
        append(&log, "a much longer second line\n");
        assert_eq!(poll(&mut t), ["a much longer second line"]);
    }

    #[test]
    fn checkpoints_resume_where_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("app.log");
        append(&log, "1\n2\n3\n");
        let mut t = tailer(dir.path(), "*.log");
        let lines = t.poll(usize::MAX, Instant::now());
        assert_eq!(texts(&lines), ["1", "2", "3"]);
        t.ack(lines[1].lineage, lines[1].end);
        let saved = t.checkpoints();
        assert_eq!(saved[0].offset, 4);
        drop(t);

        append(&log, "4\n");
        // End is for files without a checkpoint: this one resumes at 4.
        let mut again = Tailer::new(dir.path().join("*.log").to_string_lossy().into(), StartPosition::End, saved);
        assert_eq!(poll(&mut again), ["3", "4"]);

        // Copied and truncated while stopped: the copy resumes, the original starts over.
        let saved = again.checkpoints();
        drop(again);
        append(&log, "5\n");
        std::fs::copy(&log, dir.path().join("app.log.1.log")).expect("copy");
        std::fs::OpenOptions::new().write(true).open(&log).and_then(|f| f.set_len(0)).expect("truncate");
        append(&log, "6\n");
        let mut third = Tailer::new(dir.path().join("*.log").to_string_lossy().into(), StartPosition::End, saved);
        let mut got = poll(&mut third);
        got.sort();
        assert_eq!(got, ["5", "6"]);
    }
}
