//! NumPy `.npz` archives: a zip of `<name>.npy` members. Written stored (uncompressed), as `np.savez` does;
//! read stored or deflated (`np.savez_compressed`).
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use super::npy::{parse_npy, NpyArray};
use crate::{Error, Result};

/// Write an `.npz` archive atomically. `members` pairs a name (".npy" is appended) with complete `.npy` bytes
/// (from `npy_bytes_*` or [`NpyArray::to_npy_bytes`]).
pub fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) -> Result<()> {
    let zerr = |e: zip::result::ZipError| Error::format(path, format!("building zip archive: {e}"));
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in members {
        if name.is_empty() || members.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(Error::Invalid(format!(
                "{}: npz member name {name:?} is empty or repeated",
                path.display()
            )));
        }
        // Members over 4 GiB need zip64 sizes; numpy forces zip64 always, but small archives need not.
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u32::MAX as u64);
        zw.start_file(format!("{name}.npy"), opts).map_err(zerr)?;
        zw.write_all(bytes).map_err(|e| Error::io(path, e))?;
    }
    let buf = zw.finish().map_err(zerr)?.into_inner();
    super::write_atomic(path, &buf)
}

/// Read every member of an `.npz` archive, in archive order, with ".npy" stripped from the names.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let bytes = super::read_file(path)?;
    let zerr = |e: zip::result::ZipError| Error::format(path, format!("not a valid .npz (zip) archive: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zerr)?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zerr)?;
        if member.is_dir() {
            continue;
        }
        let full = member.name().to_string();
        let what = PathBuf::from(format!("{}[{full}]", path.display()));
        let mut data = Vec::with_capacity(member.size().min(1 << 30) as usize);
        // A corrupt deflate stream or CRC mismatch surfaces here as an io::Error.
        member.read_to_end(&mut data).map_err(|e| Error::io(&what, e))?;
        let name = full.strip_suffix(".npy").unwrap_or(&full).to_string();
        out.push((name, parse_npy(&data, &what)?));
    }
    Ok(out)
}

/// Look a member up by name (without ".npy") in the result of [`read_npz`].
pub fn npz_member<'a>(members: &'a [(String, NpyArray)], name: &str) -> Option<&'a NpyArray> {
    members.iter().find(|(n, _)| n == name).map(|(_, a)| a)
}
