//! The `jelou-bridge` binary: parses arguments and hands over to the library.

/// mimalloc: 15 % fewer instructions a ticket than glibc's allocator, and at high prefetch
/// less CPU and a lower peak (docs/performance.md, issue 14 step 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    allocator::give_back_sooner();
    jelou_bridge::cli::main()
}

/// mimalloc's purge delay, through its C API: the `mimalloc` crate has no options, and
/// libmimalloc-sys's `extended` feature declares `mi_option_set` but no constant for it.
mod allocator {
    use std::ffi::{c_int, c_long};

    extern "C" {
        #[cfg(test)]
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }

    /// `mi_option_purge_delay` in the `mi_option_e` enum of the mimalloc this binary is built
    /// with (libmimalloc-sys 0.1.49, mimalloc 3); a test below checks it against the
    /// environment variable of the same option.
    const PURGE_DELAY: c_int = 15;
    /// How long freed pages stay mapped before they go back to the system, in milliseconds.
    const PURGE_DELAY_MS: c_long = 10;

    /// Freed memory goes back to the system after 10 ms (100 ms for whole arenas, mimalloc's
    /// multiplier) instead of mimalloc 3's default of a second: with a thousand deliveries in
    /// flight the peak RSS is about 3 MiB lower (and once a backlog is drained the process
    /// shrinks), for no CPU the benchmark can see. The environment still decides when it
    /// names the option, as mimalloc reads it: `MIMALLOC_PURGE_DELAY` or the older
    /// `MIMALLOC_RESET_DELAY`, in any case.
    pub fn give_back_sooner() {
        let named = |key: &std::ffi::OsStr| {
            key.to_str().is_some_and(|k| {
                ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
                    .iter()
                    .any(|name| k.eq_ignore_ascii_case(name))
            })
        };
        if !std::env::vars_os().any(|(key, _)| named(&key)) {
            // SAFETY: sets a process-wide option, which mimalloc reads each time it purges.
            unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
        }
    }

    /// The purge delay in force.
    #[cfg(test)]
    pub fn purge_delay() -> c_long {
        // SAFETY: reads a process-wide option.
        unsafe { mi_option_get(PURGE_DELAY) }
    }

    #[cfg(test)]
    mod tests {
        use std::process::Command;

        /// The option index is the purge delay's: a child test process started with the
        /// option in its environment (either name, any case) reads 123 through it, and the
        /// binary's own delay does not replace it.
        #[test]
        fn the_purge_delay_option_is_the_one_set() {
            for name in ["MIMALLOC_PURGE_DELAY", "mimalloc_reset_delay"] {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "allocator::tests::child_reads_the_environment",
                        "--ignored",
                    ])
                    .env(name, "123")
                    .output()
                    .unwrap();
                let said = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "{name}: {said}");
                assert!(said.contains("1 passed"), "{name}: {said}");
            }
        }

        #[test]
        #[ignore = "run by the_purge_delay_option_is_the_one_set, with the variable set"]
        fn child_reads_the_environment() {
            assert_eq!(super::purge_delay(), 123);
            super::give_back_sooner();
            assert_eq!(super::purge_delay(), 123);
        }

        /// Without the variable, the binary's own delay is set.
        #[test]
        fn without_the_variable_the_delay_is_set() {
            if std::env::vars_os().all(|(k, _)| {
                !k.to_string_lossy()
                    .to_ascii_uppercase()
                    .starts_with("MIMALLOC_")
            }) {
                super::give_back_sooner();
                assert_eq!(super::purge_delay(), super::PURGE_DELAY_MS);
            }
        }
    }
}
