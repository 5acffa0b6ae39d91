//! The C allocator's tuning for a long-running node, set before the process starts its work.
//!
//! A node's memory comes and goes in large pieces: packuments of megabytes, read, derived and
//! dropped by threads of the blocking pool. With glibc's defaults, each of those threads may
//! get an arena of its own (up to eight per core), and the threshold above which an allocation
//! is its own `mmap` rises with every large block freed (up to 32 MiB), so large blocks end up
//! inside arenas, where freed memory is rarely returned. Measured with B8 (docs/benchmarks.md),
//! the node's peak resident size was almost three times what the same run reaches with two
//! arenas, a fixed 256 KiB mmap threshold and a 1 MiB trim threshold.
//!
//! glibc reads its tunables once, when the process starts; safe Rust cannot call `mallopt`
//! (the crate forbids `unsafe`). So `open-registry start` re-executes itself, once, with
//! `GLIBC_TUNABLES` set, unless the operator already set it (or any `MALLOC_*` variable): their
//! choice wins. Elsewhere (other C libraries, other systems) nothing is done.

/// What `start` runs with when the operator chose nothing.
pub const TUNABLES: &str = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=262144:glibc.malloc.trim_threshold=1048576";

/// Whether the process should re-execute itself with [`TUNABLES`]: a `start`, on glibc, with no
/// allocator settings of the operator's in `env`.
pub fn wanted<'a>(
    args: &[std::ffi::OsString],
    mut env: impl Iterator<Item = (&'a std::ffi::OsStr, &'a std::ffi::OsStr)>,
) -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && args.get(1).is_some_and(|a| a == "start")
        && !env.any(|(k, _)| {
            k == "GLIBC_TUNABLES" || k.to_str().is_some_and(|k| k.starts_with("MALLOC_"))
        })
}

/// Re-executes this program with [`TUNABLES`] when [`wanted`]; returns only when it does not
/// (or when the exec failed, which is logged to stderr and otherwise harmless).
pub fn reexec_tuned() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    if !wanted(
        &args,
        env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
    ) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let e = std::process::Command::new(exe)
            .args(&args[1..])
            .env("GLIBC_TUNABLES", TUNABLES)
            .exec();
        eprintln!("open-registry: could not re-execute with allocator tunables ({e}); going on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{OsStr, OsString};

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_start_and_only_when_the_operator_chose_nothing() {
        let none: [(&OsStr, &OsStr); 0] = [];
        let on_glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(
            wanted(&args(&["open-registry", "start"]), none.into_iter()),
            on_glibc
        );
        assert!(!wanted(
            &args(&["open-registry", "status"]),
            none.into_iter()
        ));
        assert!(!wanted(&args(&["open-registry"]), none.into_iter()));
        for k in [
            "GLIBC_TUNABLES",
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
        ] {
            let env = [(OsStr::new(k), OsStr::new("2"))];
            assert!(
                !wanted(&args(&["open-registry", "start"]), env.into_iter()),
                "{k}"
            );
        }
        let unrelated = [(OsStr::new("PATH"), OsStr::new("/bin"))];
        assert_eq!(
            wanted(&args(&["open-registry", "start"]), unrelated.into_iter()),
            on_glibc
        );
    }
}
