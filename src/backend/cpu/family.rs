//! The CPU kernel family: which hand-written SIMD paths the CPU backend takes.
//!
//! Families are ordered; each enables the paths of the ones below it:
//! - `portable`: plain Rust loops only (auto-vectorised for the x86-64-v3 baseline the crate is built for);
//! - `avx2`: + the AVX2 + FMA matrix-vector kernel (`matmul_avx2`);
//! - `avx512`: + the AVX-512F conv microkernel, its packed and Winograd convolutions, and the AVX-512 groupnorm;
//! - `avx512bf16`: + the `vdpbf16ps` bf16 matrix-vector kernel (`matmul_avx512`).
//!
//! The backend takes the best family the CPU has; `LLAMAGEN_CPU_KERNELS=portable|avx2|avx512|avx512bf16` forces
//! a lower one (to test every path on one machine, or to compare them). The `gemm` crate, used for the larger
//! products and the Winograd GEMMs below `avx512`, picks its own SIMD and is not governed by this setting.
use crate::{Error, Result};
use std::fmt;

/// The environment variable that forces a family.
pub const ENV: &str = "LLAMAGEN_CPU_KERNELS";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelFamily {
    Portable,
    Avx2,
    Avx512,
    Avx512Bf16,
}

impl KernelFamily {
    pub const ALL: [KernelFamily; 4] = [Self::Portable, Self::Avx2, Self::Avx512, Self::Avx512Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Avx512Bf16 => "avx512bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the family's instructions.
    pub fn supported(self) -> bool {
        self.features().iter().all(|f| has(f))
    }

    /// The CPU features the family needs (`/proc/cpuinfo` flags).
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Self::Portable => &[],
            Self::Avx2 => &["avx2", "fma"],
            Self::Avx512 => &["avx2", "fma", "avx512f", "avx512bw"],
            Self::Avx512Bf16 => &["avx2", "fma", "avx512f", "avx512bw", "avx512bf16"],
        }
    }

    /// The best family this CPU supports.
    pub fn detected() -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|f| f.supported())
            .unwrap_or(Self::Portable)
    }

    /// Every family this CPU supports, lowest first.
    pub fn all_supported() -> Vec<Self> {
        Self::ALL.into_iter().filter(|f| f.supported()).collect()
    }

    /// `requested` if this CPU can run it, else an error naming what is missing.
    pub fn checked(requested: Self) -> Result<Self> {
        requested
            .unsupported_reason()
            .map_or(Ok(requested), |why| Err(Error::Invalid(why)))
    }

    fn unsupported_reason(self) -> Option<String> {
        let missing: Vec<&str> = self.features().iter().copied().filter(|f| !has(f)).collect();
        (!missing.is_empty()).then(|| {
            format!(
                "CPU kernel family `{self}` needs {}, which this CPU lacks (it supports up to `{}`)",
                missing.join(" + "),
                Self::detected()
            )
        })
    }

    /// The family named by `LLAMAGEN_CPU_KERNELS`, else the detected one; an unknown name or a family this CPU
    /// cannot run is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        let v = match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => return Ok(Self::detected()),
            Err(std::env::VarError::NotUnicode(v)) => return Err(Error::Invalid(format!("{ENV}={v:?} is not UTF-8"))),
            Ok(v) if v.trim().is_empty() => return Ok(Self::detected()),
            Ok(v) => v,
        };
        let f = Self::parse(&v).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
            Error::Invalid(format!(
                "{ENV}={v:?}: unknown CPU kernel family (one of {})",
                names.join(", ")
            ))
        })?;
        match f.unsupported_reason() {
            None => Ok(f),
            Some(why) => Err(Error::Invalid(format!("{ENV}={v:?}: {why}"))),
        }
    }
}

/// One `/proc/cpuinfo` flag, detected at run time.
fn has(feature: &str) -> bool {
    match feature {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        _ => false,
    }
}

impl fmt::Display for KernelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_is_by_capability() {
        for f in KernelFamily::ALL {
            assert_eq!(KernelFamily::parse(f.name()), Some(f));
        }
        assert_eq!(KernelFamily::parse(" AVX2 "), Some(KernelFamily::Avx2));
        assert_eq!(KernelFamily::parse("sse"), None);
        assert!(KernelFamily::Portable < KernelFamily::Avx2 && KernelFamily::Avx512 < KernelFamily::Avx512Bf16);
        // Each family's features include the ones below it.
        for w in KernelFamily::ALL.windows(2) {
            assert!(w[0].features().iter().all(|f| w[1].features().contains(f)));
        }
    }

    #[test]
    fn detection_is_consistent() {
        let d = KernelFamily::detected();
        assert!(d.supported());
        assert!(KernelFamily::Portable.supported());
        for f in KernelFamily::ALL {
            assert_eq!(f.supported(), f <= d, "{f} vs detected {d}");
            assert_eq!(KernelFamily::checked(f).is_ok(), f <= d);
        }
        assert_eq!(KernelFamily::all_supported().last(), Some(&d));
    }
}
