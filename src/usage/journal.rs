//! The usage journal: every record is appended to a local file (one `write(2)` of one JSON
//! line) before anything else happens to it, so a record the gateway made survives a SIGKILL
//! (the page cache has it) and, after the next group `fsync`, a power loss. The writer ships
//! the journal to the store in order and, once it has shipped a long stretch, seals the file
//! and starts a fresh one; a sealed file is deleted when it is all in the store.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a record could not be journaled.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the journal is full ({0} bytes): the store has been unreachable too long")]
    Full(u64),
    #[error("the journal cannot be written: {0}")]
    Io(#[from] std::io::Error),
}

struct Active {
    /// Opened (and the file made) on the first record, so an idle gateway leaves no file.
    file: Option<File>,
    len: u64,
    /// Written since the last fsync.
    dirty: bool,
}

pub struct Journal {
    path: PathBuf,
    sealed: PathBuf,
    max_bytes: u64,
    active: Mutex<Active>,
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut len = file.metadata()?.len();
    if len > 0 {
        // A line torn by a crash mid-write is ended here, so that the next record starts a
        // line of its own (the torn one is then unreadable, and counted as lost).
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            len += 1;
        }
    }
    Ok((file, len))
}

impl Journal {
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Journal> {
        let (file, len) = match path.exists() {
            true => open_append(path).map(|(f, len)| (Some(f), len))?,
            false => (None, 0),
        };
        let mut sealed = path.as_os_str().to_owned();
        sealed.push(".sealed");
        Ok(Journal {
            path: path.to_path_buf(),
            sealed: PathBuf::from(sealed),
            max_bytes,
            active: Mutex::new(Active {
                file,
                len,
                dirty: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        // A panic while holding the lock leaves the file as it was: still usable.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sealed_path(&self) -> &Path {
        &self.sealed
    }

    /// Appends one line (ending in `\n`) with a single write.
    pub fn append(&self, line: &[u8]) -> Result<(), AppendError> {
        let mut active = self.lock();
        if active.len + line.len() as u64 > self.max_bytes {
            return Err(AppendError::Full(self.max_bytes));
        }
        let file = match &mut active.file {
            Some(file) => file,
            None => {
                let (file, len) = open_append(&self.path)?;
                active.len = len;
                active.file.insert(file)
            }
        };
        file.write_all(line)?;
        active.len += line.len() as u64;
        active.dirty = true;
        Ok(())
    }

    /// The active file's length: what the writer may read up to.
    pub fn written(&self) -> u64 {
        self.lock().len
    }

    /// Flushes what was appended since the last call to the disk (the group fsync).
    pub fn sync(&self) -> std::io::Result<()> {
        let file = {
            let mut active = self.lock();
            if !active.dirty {
                return Ok(());
            }
            active.dirty = false;
            // Synced through its own handle, so appends go on meanwhile.
            match &active.file {
                Some(file) => file.try_clone()?,
                None => return Ok(()),
            }
        };
        file.sync_data()
    }

    /// Seals the active file (renamed to the sealed path) and starts an empty one. Only when
    /// no sealed file is waiting.
    pub fn seal(&self) -> std::io::Result<()> {
        let mut active = self.lock();
        let Some(file) = &active.file else {
            return Ok(());
        };
        if active.dirty {
            file.sync_data()?;
        }
        std::fs::rename(&self.path, &self.sealed)?;
        *active = Active {
            file: None,
            len: 0,
            dirty: false,
        };
        Ok(())
    }
}

/// Reads whole lines of `path` from `from`, at most about `max` bytes: the bytes up to the
/// last `\n` read. A missing file reads as empty.
pub fn read_lines(path: &Path, from: u64, max: usize) -> std::io::Result<Vec<u8>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity(max.min(1 << 20));
    (&mut file).take(max as u64).read_to_end(&mut buf)?;
    match memchr::memrchr(b'\n', &buf) {
        Some(end) => buf.truncate(end + 1),
        // A single line longer than `max`: read on until it ends.
        None if buf.len() == max => {
            let mut rest = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                if file.read(&mut byte)? == 0 {
                    return Ok(Vec::new());
                }
                rest.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            buf.extend_from_slice(&rest);
        }
        None => buf.clear(),
    }
    Ok(buf)
}
