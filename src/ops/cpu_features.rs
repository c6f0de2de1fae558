//! Which instruction-set level the CPU kernels may use, decided once per process.
//!
//! The only place in `src/` that asks the CPU what it has (`tests/cpu_dispatch.rs` fails on
//! an `is_x86_feature_detected!` anywhere else): every kernel dispatch calls `avx2()`,
//! `avx512()` or `avx512_vnni()` here. The level is what the CPU has, capped by the
//! environment variable `TESSERA_CPU_FEATURES`:
//!
//! | value | kernels used |
//! |---|---|
//! | `native` (default, or unset) | the best the CPU has |
//! | `avx512` | AVX-512 F/BW/VL (+ VNNI where present) and AVX2 |
//! | `avx2` | AVX2 + FMA + F16C, no AVX-512 |
//! | `scalar` | the portable twins only (no intrinsics, no FMA-compiled bodies) |
//!
//! An unknown value, or a level the CPU lacks, is an error naming the value and what the
//! CPU has (`init`, called by the CLI before anything runs); it is never ignored. Every
//! level gives the same bits: each SIMD kernel has a scalar twin in the same float order.
//!
//! Invariant: the choice never changes after the first call (a `OnceLock`), so one step's
//! rows never mix paths. Non-x86 builds have only `scalar`.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that caps the level.
pub const ENV_VAR: &str = "TESSERA_CPU_FEATURES";

/// An instruction-set level; each includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust only.
    Scalar,
    /// AVX2, FMA and F16C.
    Avx2,
    /// `Avx2` plus AVX-512 F, BW and VL.
    Avx512,
}

impl Level {
    /// The name `TESSERA_CPU_FEATURES` takes for this level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the CPU has, as the kernels group it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The highest level whose every feature is present.
    pub level: Level,
    /// AVX-512 VNNI (used by the panel matmul kernels on top of `Avx512`).
    pub vnni: bool,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.level, self.vnni) {
            (Level::Avx512, true) => f.write_str("avx512 (with VNNI)"),
            (Level::Avx512, false) => f.write_str("avx512 (no VNNI)"),
            (level, _) => write!(f, "{level}"),
        }
    }
}

/// The process's choice: the level the kernels use, and the host it was capped from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// The level every kernel dispatch uses.
    pub level: Level,
    /// Whether the VNNI panel kernels run (`level == Avx512` and the host has VNNI).
    pub vnni: bool,
    /// What the CPU has.
    pub host: Host,
}

/// `TESSERA_CPU_FEATURES` asked for something this process cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuFeaturesError {
    #[error("{ENV_VAR}={value:?} is not a level; use one of native, avx512, avx2, scalar (this CPU has {host})")]
    Unknown { value: String, host: Host },
    #[error("{ENV_VAR}={value:?} asks for {wanted}, but this CPU has only {host}; use native or a lower level")]
    Unsupported {
        value: String,
        wanted: Level,
        host: Host,
    },
}

/// Chooses the level for `value` (the variable's value, `None` when unset) on `host`.
pub fn choose(value: Option<&str>, host: Host) -> Result<CpuFeatures, CpuFeaturesError> {
    let wanted = match value.map(str::trim) {
        None | Some("") | Some("native") => host.level,
        Some("avx512") => Level::Avx512,
        Some("avx2") => Level::Avx2,
        Some("scalar") => Level::Scalar,
        Some(other) => {
            return Err(CpuFeaturesError::Unknown {
                value: other.to_string(),
                host,
            })
        }
    };
    if wanted > host.level {
        return Err(CpuFeaturesError::Unsupported {
            value: value.unwrap_or_default().trim().to_string(),
            wanted,
            host,
        });
    }
    Ok(CpuFeatures {
        level: wanted,
        vnni: wanted == Level::Avx512 && host.vnni,
        host,
    })
}

/// What this CPU has (asked once; std caches the answers).
pub fn host() -> Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    *HOST.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Host {
    use std::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
    let level = match (avx2, avx512) {
        (_, true) => Level::Avx512,
        (true, false) => Level::Avx2,
        _ => Level::Scalar,
    };
    Host {
        level,
        vnni: avx512 && has!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Host {
    Host {
        level: Level::Scalar,
        vnni: false,
    }
}

static CHOSEN: OnceLock<CpuFeatures> = OnceLock::new();

/// Decides the level from `TESSERA_CPU_FEATURES` and the CPU; the CLI calls it before
/// loading a model so a bad value stops the process with its message. Later calls
/// return the same choice.
pub fn init() -> Result<CpuFeatures, CpuFeaturesError> {
    if let Some(chosen) = CHOSEN.get() {
        return Ok(*chosen);
    }
    let chosen = choose(std::env::var(ENV_VAR).ok().as_deref(), host())?;
    Ok(*CHOSEN.get_or_init(|| chosen))
}

/// The process's choice. Without an earlier `init` (library users, tests), the first
/// kernel call decides; a bad `TESSERA_CPU_FEATURES` then panics with `init`'s message
/// rather than running a path nobody asked for.
#[inline]
pub fn chosen() -> &'static CpuFeatures {
    match CHOSEN.get() {
        Some(chosen) => chosen,
        None => first_choice(),
    }
}

/// `chosen`'s first call (not `get_or_init(init)`: `init` sets the cell itself, and a
/// cell initialized from inside its own initializer deadlocks).
#[cold]
fn first_choice() -> &'static CpuFeatures {
    if let Err(e) = init() {
        panic!("{e}");
    }
    CHOSEN.get().expect("init sets the choice")
}

/// Whether kernels may use AVX2, FMA and F16C.
#[inline]
pub fn avx2() -> bool {
    chosen().level >= Level::Avx2
}

/// Whether kernels may use AVX-512 F/BW/VL (and AVX2).
#[inline]
pub fn avx512() -> bool {
    chosen().level >= Level::Avx512
}

/// Whether the AVX-512 VNNI panel kernels may run.
#[inline]
pub fn avx512_vnni() -> bool {
    chosen().vnni
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: Host = Host {
        level: Level::Avx512,
        vnni: true,
    };
    const HASWELL: Host = Host {
        level: Level::Avx2,
        vnni: false,
    };

    #[test]
    fn native_and_unset_take_what_the_cpu_has() {
        for value in [None, Some(""), Some("native"), Some(" native ")] {
            let c = choose(value, ZEN4).unwrap();
            assert_eq!((c.level, c.vnni), (Level::Avx512, true), "{value:?}");
            assert_eq!(choose(value, HASWELL).unwrap().level, Level::Avx2);
        }
    }

    #[test]
    fn lower_levels_cap_the_host() {
        let avx2 = choose(Some("avx2"), ZEN4).unwrap();
        assert_eq!(
            (avx2.level, avx2.vnni, avx2.host),
            (Level::Avx2, false, ZEN4)
        );
        let scalar = choose(Some("scalar"), HASWELL).unwrap();
        assert_eq!((scalar.level, scalar.vnni), (Level::Scalar, false));
        let no_vnni = Host {
            level: Level::Avx512,
            vnni: false,
        };
        let c = choose(Some("avx512"), no_vnni).unwrap();
        assert_eq!((c.level, c.vnni), (Level::Avx512, false));
    }

    #[test]
    fn a_level_the_cpu_lacks_is_an_error_naming_both() {
        let e = choose(Some("avx512"), HASWELL).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(
            e,
            CpuFeaturesError::Unsupported {
                wanted: Level::Avx512,
                ..
            }
        ));
        assert!(msg.contains("TESSERA_CPU_FEATURES=\"avx512\""), "{msg}");
        assert!(msg.contains("only avx2"), "{msg}");
        let scalar_host = Host {
            level: Level::Scalar,
            vnni: false,
        };
        assert!(choose(Some("avx2"), scalar_host).is_err());
    }

    #[test]
    fn an_unknown_value_is_an_error_not_ignored() {
        for bad in ["AVX2", "sse4", "avx512vnni", "auto"] {
            let msg = choose(Some(bad), ZEN4).unwrap_err().to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("native, avx512, avx2, scalar"), "{msg}");
            assert!(msg.contains("avx512 (with VNNI)"), "{msg}");
        }
    }

    #[test]
    fn the_choice_never_exceeds_the_host() {
        let c = chosen();
        assert!(c.level <= host().level);
        assert!(!c.vnni || host().vnni);
    }
}
