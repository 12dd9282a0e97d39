//! `embed`: ids -> rows of an embedding table (token ids, class ids). An id outside the table is an error, never a
//! panic: ids come from user files (`--class`, token files) as well as from the sampler.
use super::CpuWeight;

pub fn embed(ids: &[i32], table: &CpuWeight, d: usize, out: &mut [f32]) -> Result<(), i32> {
    let rows = table.shape[0];
    for (&id, o) in ids.iter().zip(out.chunks_mut(d)) {
        if id < 0 || id as usize >= rows {
            return Err(id);
        }
        table.copy_row(id as usize, o);
    }
    Ok(())
}
