//! `gelu` (tanh approximation), the activation of the t2i caption MLP.
use super::round_bf16;

pub fn gelu_tanh(x: &[f32], round: bool, out: &mut [f32]) {
    const BETA: f32 = 0.797_884_6; // sqrt(2/pi)
    const KAPPA: f32 = 0.044715;
    for (o, &v) in out.iter_mut().zip(x) {
        let y = 0.5 * v * (1.0 + (BETA * (v + KAPPA * v * v * v)).tanh());
        *o = if round { round_bf16(y) } else { y };
    }
}

impl crate::ops::Exec<crate::ops::gelu::Gelu> for super::CpuBackend {
    fn exec(&mut self, _: &crate::ops::gelu::Gelu, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        gelu_tanh(v.f32(a.ins[0]), self.round, v.f32_mut(a.out));
        Ok(())
    }
}
