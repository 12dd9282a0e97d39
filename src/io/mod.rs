//! File formats the engine reads and writes: NumPy `.npy`/`.npz` (token ids, reference arrays) and PNG/JPEG
//! images, plus the pixel conversions of spec §10.
pub mod npy;
pub mod npz;
pub mod png;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Distinguishes temporaries of concurrent writers in one process (threads saving different images of a batch
/// next to each other); the pid separates processes.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically: a temporary file in the same directory (name starting with '.' and ending
/// in ".tmp"), then rename. Readers (and a crashed run) never see a half-written file. On error the temporary
/// is removed. Errors name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        )
    })?;
    // A bare file name has parent "", which `join` would treat as the root-less current directory anyway, but
    // spelling it "." keeps error messages readable.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Shortened so that a target name near the 255-byte limit still leaves room for the decorations.
    let stem: String = name.to_string_lossy().chars().take(100).collect();
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        stem,
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.flush()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // The temporary may not exist (open failed); nothing more can be done if removal fails.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Read a whole file, with the error naming it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_without_file_name_errors() {
        let e = write_atomic(Path::new("/"), b"abc").unwrap_err();
        assert!(e.to_string().contains('/'), "{e}");
    }
}
