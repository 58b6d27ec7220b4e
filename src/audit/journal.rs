//! The private journal: the write-ahead log of entries and their private
//! sidecar (index tags and sealed personal material).
//!
//! This module owns the segment files under `private/journal/` and their
//! record framing. A record is acknowledged only after the segment is synced,
//! so the journal is the durable truth from which the public tiles are
//! rebuilt after a crash. It must not decide *when* to sync (the writer
//! does, once per group) and must never be served publicly.
//!
//! Segment `<start>.journal` (start index, 20 digits) holds consecutive
//! records: `u32 length || payload || SHA-256(payload)`, and a payload is
//! `u16 entry length || entry || u8 tag count || tags || u8 sealed? ||
//! [case tag || nonce || u32 length || ciphertext]`.
//!
//! The segment being written is filled with zeros ahead of its records (see
//! [`RESERVE`]), so that a sync writes the new records' blocks and not the
//! file system's bookkeeping for a file that grew. A reader stops at the first
//! record that does not check, as it does at a torn tail; a segment is cut to
//! its records' length when the next one is started, and at open.

use super::error::{AuditError, Result};
use super::keys::{Sealed, Tag, sync_dir};
use crate::durable_folders::Readers;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest record payload accepted when reading (bounds memory on damaged input).
const MAX_RECORD: usize = 4 << 20;

/// How far ahead of its records the segment being written is filled with zeros.
///
/// On ext4, `fdatasync` of a file that grew since the last sync also commits the file
/// system's journal (the new size and blocks), while a sync of blocks that were already
/// allocated and written writes only them. Measured on the development machine with groups
/// of twelve 600-byte records: about 185 µs of kernel CPU and 420 µs of wall time a sync when
/// appending, against 70 µs and 175 µs when overwriting zeros written beforehand. The zeros
/// cost one extra write of this size every few thousand entries.
const RESERVE: u64 = 1 << 20;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The log entry (the encoded leaf).
    pub entry: Vec<u8>,
    /// Search tags under which the entry is indexed.
    pub tags: Vec<Tag>,
    /// Sealed personal material, if the fact concerned a case.
    pub sealed: Option<Sealed>,
}

impl Record {
    /// Whether the record is within the bound that reading applies: a larger one would be
    /// written, and then taken for a torn tail at the next open.
    pub fn fits(&self) -> bool {
        let sealed = self
            .sealed
            .as_ref()
            .map_or(0, |s| s.case.len() + s.nonce.len() + 4 + s.ciphertext.len());
        let body = 2 + self.entry.len() + 1 + self.tags.len() * 32 + 1 + sealed;
        body <= MAX_RECORD && self.entry.len() <= usize::from(u16::MAX) && self.tags.len() <= 255
    }

    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let body = out.len();
        out.extend_from_slice(&(self.entry.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.entry);
        out.push(self.tags.len() as u8);
        for t in &self.tags {
            out.extend_from_slice(t);
        }
        match &self.sealed {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.case);
                out.extend_from_slice(&s.nonce);
                out.extend_from_slice(&(s.ciphertext.len() as u32).to_be_bytes());
                out.extend_from_slice(&s.ciphertext);
            }
        }
        let len = (out.len() - body) as u32;
        out[start..body].copy_from_slice(&len.to_be_bytes());
        let digest = Sha256::digest(&out[body..]);
        out.extend_from_slice(&digest);
    }

    fn decode(mut p: &[u8]) -> Option<Record> {
        fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (a, b) = (p.get(..n)?, p.get(n..)?);
            *p = b;
            Some(a)
        }
        let elen = usize::from(u16::from_be_bytes(take(&mut p, 2)?.try_into().ok()?));
        let entry = take(&mut p, elen)?.to_vec();
        let ntags = usize::from(take(&mut p, 1)?[0]);
        let mut tags = Vec::with_capacity(ntags);
        for _ in 0..ntags {
            tags.push(take(&mut p, 32)?.try_into().ok()?);
        }
        let sealed = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let case = take(&mut p, 32)?.try_into().ok()?;
                let nonce = take(&mut p, 24)?.try_into().ok()?;
                let clen = u32::from_be_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
                Some(Sealed {
                    case,
                    nonce,
                    ciphertext: take(&mut p, clen)?.to_vec(),
                })
            }
            _ => return None,
        };
        p.is_empty().then_some(Record {
            entry,
            tags,
            sealed,
        })
    }
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.journal")
}

/// Lists the segments of a journal folder, in order of start index.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let e = e.map_err(|e| AuditError::io(dir, e))?;
        let name = e.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push((start, e.path()));
    }
    out.sort();
    Ok(out)
}

/// The outcome of a journal scan.
#[derive(Debug)]
pub struct Scan {
    /// The index the next record will get.
    pub next: u64,
    /// The last segment (start index and path) and its valid length, if any.
    pub tail: Option<(u64, PathBuf, u64)>,
}

/// Reads every record in order, calling `f(index, record)`. A damaged tail
/// in the last segment (a write that a crash cut short, never acknowledged)
/// ends the scan; damage anywhere else is corruption.
pub fn scan(dir: &Path, mut f: impl FnMut(u64, Record) -> Result<()>) -> Result<Scan> {
    let segs = segments(dir)?;
    let mut next = 0u64;
    let mut tail = None;
    for (i, (start, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        if *start != next {
            return Err(AuditError::Corrupt(format!(
                "journal segment {} starts at {start}, expected {next}",
                path.display()
            )));
        }
        let data = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let mut pos = 0usize;
        while pos < data.len() {
            let record = data
                .get(pos..pos + 4)
                .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .filter(|&len| len <= MAX_RECORD)
                .and_then(|len| {
                    let body = data.get(pos + 4..pos + 4 + len)?;
                    let digest = data.get(pos + 4 + len..pos + 36 + len)?;
                    (Sha256::digest(body).as_slice() == digest).then_some((len, body))
                })
                .and_then(|(len, body)| Some((len, Record::decode(body)?)));
            let Some((len, record)) = record else {
                if last {
                    break;
                }
                return Err(AuditError::Corrupt(format!(
                    "journal segment {} is damaged at byte {pos} (entry {next})",
                    path.display()
                )));
            };
            f(next, record)?;
            next += 1;
            pos += 36 + len;
        }
        if last {
            tail = Some((*start, path.clone(), pos as u64));
        }
    }
    Ok(Scan { next, tail })
}

/// Appends records to the newest segment.
#[derive(Debug)]
pub struct JournalWriter {
    dir: PathBuf,
    path: PathBuf,
    file: Arc<File>,
    /// The length of the records written to the segment.
    bytes: u64,
    /// The length of the segment file: its records, then zeros.
    reserved: u64,
    segment_limit: u64,
}

impl JournalWriter {
    /// Opens the journal for appending after a scan: the damaged tail or the
    /// zeros after the last record (if any) are cut off and synced; a fresh
    /// journal gets its first segment.
    ///
    /// Bytes other than zeros that the cut removes are first kept beside the segment, in
    /// `<segment>.cut-at-<offset>` (see [`keep_cut_bytes`]).
    pub fn open(dir: &Path, scan: &Scan, segment_limit: u64) -> Result<Self> {
        let (path, len) = match &scan.tail {
            Some((_, path, len)) => (path.clone(), *len),
            None => (dir.join(segment_name(0)), 0),
        };
        let file = open_segment(&path)?;
        keep_cut_bytes(&file, &path, len)?;
        cut(&file, &path, len)?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            path,
            file: Arc::new(file),
            bytes: len,
            reserved: len,
            segment_limit,
        })
    }

    /// Writes framed records after the last ones (not yet durable).
    pub fn write(&mut self, framed: &[u8]) -> Result<()> {
        let end = self.bytes + framed.len() as u64;
        if end > self.reserved {
            self.reserve(end + RESERVE)?;
        }
        self.file
            .write_all_at(framed, self.bytes)
            .map_err(|e| AuditError::io(&self.path, e))?;
        self.bytes = end;
        Ok(())
    }

    /// Fills the segment with zeros up to `len` bytes. The next sync makes them durable
    /// with the records written into them.
    fn reserve(&mut self, len: u64) -> Result<()> {
        let zeros = vec![0u8; RESERVE as usize];
        while self.reserved < len {
            let n = (len - self.reserved).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], self.reserved)
                .map_err(|e| AuditError::io(&self.path, e))?;
            self.reserved += n as u64;
        }
        Ok(())
    }

    /// The current segment file, for syncing from other threads.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Makes everything written so far durable. The log's sync threads sync the segment
    /// through [`Self::file`]; the tests sync here.
    #[cfg(test)]
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| AuditError::io(&self.path, e))
    }

    /// Whether the current segment has reached its size limit.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.segment_limit
    }

    /// Starts a new segment whose first record will be entry `next`. The
    /// finished segment is first cut to its records and synced, so that only
    /// the last segment can end in anything else.
    pub fn rotate(&mut self, next: u64) -> Result<()> {
        self.finish_segment()?;
        self.start_segment(next)
    }

    /// The first half of [`JournalWriter::rotate`]: cuts the segment being written to its
    /// records and syncs it. Its failure is a failed sync of the journal.
    pub fn finish_segment(&mut self) -> Result<()> {
        cut(&self.file, &self.path, self.bytes)
    }

    /// The second half of [`JournalWriter::rotate`]: starts the segment whose first record
    /// will be entry `next`.
    pub fn start_segment(&mut self, next: u64) -> Result<()> {
        let path = self.dir.join(segment_name(next));
        let file = open_segment(&path)?;
        sync_dir(&self.dir)?;
        self.path = path;
        self.file = Arc::new(file);
        self.bytes = 0;
        self.reserved = 0;
        Ok(())
    }

    /// Cuts the segment to its records and syncs it: the end of a log closed
    /// in good order.
    pub fn finish(self) -> Result<()> {
        cut(&self.file, &self.path, self.bytes)
    }
}

/// Cuts a segment to `len` bytes (its records) and syncs it with its length.
/// Before a segment is cut to `len`, copies what the cut removes, up to its last byte other than
/// zero, into `<segment>.cut-at-<len>` beside it, synced, and says so in the log.
///
/// After a crash, those bytes are records the crash cut short, never acknowledged (an entry is
/// acknowledged once its segment is synced). But a record damaged on the disk after it was
/// synced ends the scan just the same, and the records after it would be cut with it: kept,
/// they can still be examined and recovered. The scan ignores these files (they do not end in
/// `.journal`); the operator removes them once examined.
fn keep_cut_bytes(file: &File, path: &Path, len: u64) -> Result<()> {
    let io = |e| AuditError::io(path, e);
    let total = file.metadata().map_err(io)?.len();
    if total <= len {
        return Ok(());
    }
    let mut removed = vec![0u8; usize::try_from(total - len).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut removed, len).map_err(io)?;
    let Some(last) = removed.iter().rposition(|&b| b != 0) else {
        return Ok(());
    };
    removed.truncate(last + 1);
    // A name of its own: an earlier recovery's kept bytes, not examined yet, are never
    // overwritten.
    let base = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let kept = (0u32..)
        .map(|n| match n {
            0 => path.with_file_name(format!("{base}.cut-at-{len}")),
            n => path.with_file_name(format!("{base}.cut-at-{len}.{n}")),
        })
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| path.with_file_name(format!("{base}.cut-at-{len}.last")));
    super::keys::write_durably(&kept, &removed, Readers::Owner)?;
    tracing::warn!(
        segment = %path.display(),
        offset = len,
        bytes = removed.len(),
        kept = %kept.display(),
        "the journal ended in a record that does not check: most often a write a crash cut short, \
         never acknowledged; the bytes cut off are kept beside the segment for examination"
    );
    Ok(())
}

fn cut(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| AuditError::io(path, e))
}

/// Opens (or creates) a segment for writing at chosen offsets.
fn open_segment(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written must read back: a record over the reading bound is refused before it
    /// is written, rather than taken for a torn tail at the next open.
    #[test]
    fn only_records_that_read_back_fit() {
        let sealed = |len: usize| Record {
            entry: vec![1; 100],
            tags: vec![[2; 32]],
            sealed: Some(Sealed {
                case: [3; 32],
                nonce: [4; 24],
                ciphertext: vec![5; len],
            }),
        };
        let largest = MAX_RECORD - (2 + 100 + 1 + 32 + 1 + 32 + 24 + 4);
        let fits = sealed(largest);
        assert!(fits.fits());
        let mut framed = Vec::new();
        fits.encode_into(&mut framed);
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(
            dir.path(),
            &scan(dir.path(), |_, _| Ok(())).unwrap(),
            1 << 30,
        )
        .unwrap();
        w.write(&framed).unwrap();
        let mut read = Vec::new();
        scan(dir.path(), |_, r| {
            read.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(read, [fits]);
        assert!(!sealed(largest + 1).fits());
    }

    #[test]
    fn torn_tail_is_dropped_and_appending_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let scan0 = scan(dir.path(), |_, _| Ok(())).unwrap();
        let mut w = JournalWriter::open(dir.path(), &scan0, 1 << 20).unwrap();
        let rec = |i: u8| Record {
            entry: vec![i; 10],
            tags: vec![[i; 32]],
            sealed: None,
        };
        let mut buf = Vec::new();
        for i in 0..3 {
            rec(i).encode_into(&mut buf);
        }
        w.write(&buf).unwrap();
        w.write(&buf[..20]).unwrap(); // a torn fourth record
        w.sync().unwrap();
        drop(w);
        let mut seen = Vec::new();
        let s = scan(dir.path(), |i, r| {
            seen.push((i, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(s.next, 3);
        assert_eq!(seen[2].1, rec(2));
        let kept = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".cut-at-"))
                .collect();
            names.sort();
            names
        };
        let mut w = JournalWriter::open(dir.path(), &s, 1 << 20).unwrap();
        // The torn record is cut off, and kept beside the segment (without the zeros after it).
        let at = buf.len();
        let name = format!("{}.cut-at-{at}", segment_name(0));
        assert_eq!(kept(dir.path()), std::slice::from_ref(&name));
        let torn = &buf[..20];
        let written = torn.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert_eq!(
            std::fs::read(dir.path().join(&name)).unwrap(),
            &torn[..written]
        );
        let mut buf = Vec::new();
        rec(3).encode_into(&mut buf);
        w.write(&buf).unwrap();
        w.sync().unwrap();
        drop(w);
        let s = scan(dir.path(), |_, _| Ok(())).unwrap();
        assert_eq!(s.next, 4);
        // A journal that ends in zeros alone keeps nothing more.
        JournalWriter::open(dir.path(), &s, 1 << 20).unwrap();
        assert_eq!(kept(dir.path()), [name]);
    }

    #[test]
    fn zeros_ahead_of_the_records_end_a_scan_and_finished_segments_keep_only_records() {
        let dir = tempfile::tempdir().unwrap();
        let len = |start: u64| {
            std::fs::metadata(dir.path().join(segment_name(start)))
                .unwrap()
                .len()
        };
        let framed = |i: u8| {
            let mut buf = Vec::new();
            Record {
                entry: vec![i; 10],
                tags: vec![],
                sealed: None,
            }
            .encode_into(&mut buf);
            buf
        };
        let count = || scan(dir.path(), |_, _| Ok(())).unwrap();
        let mut w = JournalWriter::open(dir.path(), &count(), 1 << 20).unwrap();
        let three = [framed(0), framed(1), framed(2)].concat();
        w.write(&three).unwrap();
        w.sync().unwrap();
        assert_eq!(
            len(0),
            three.len() as u64 + RESERVE,
            "zeros follow the records"
        );
        // What a reader finds while the segment is being written, or after a crash.
        let s = count();
        assert_eq!(s.next, 3);
        assert_eq!(s.tail.as_ref().unwrap().2, three.len() as u64);

        w.rotate(3).unwrap();
        assert_eq!(
            len(0),
            three.len() as u64,
            "a finished segment ends with its records"
        );
        w.write(&framed(3)).unwrap();
        w.sync().unwrap();
        drop(w);

        let s = count();
        assert_eq!(s.next, 4);
        let mut w = JournalWriter::open(dir.path(), &s, 1 << 20).unwrap();
        assert_eq!(len(3), framed(3).len() as u64, "opening cuts the zeros off");
        w.write(&framed(4)).unwrap();
        w.sync().unwrap();
        let mut seen = Vec::new();
        scan(dir.path(), |i, r| {
            seen.push((i, r.entry[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
        w.finish().unwrap();
        assert_eq!(
            len(3),
            (framed(3).len() + framed(4).len()) as u64,
            "a journal closed in good order keeps no zeros"
        );
    }
}
