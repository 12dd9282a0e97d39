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

impl crate::ops::Exec<crate::ops::embed::Embed> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::embed::Embed, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let t = self.w(op.table);
        embed(v.i32(a.ins[0]), t, op.d, v.f32_mut(a.out))
            .map_err(|id| crate::Error::Invalid(format!("id {id} is outside `{}` ({} rows)", t.name, t.shape[0])))
    }
}
