//! The `jelou-bridge` binary: parses arguments and hands over to the library.

/// mimalloc: 15 % fewer instructions a ticket than glibc's allocator, and at high prefetch
/// less CPU and a lower peak (docs/performance.md, issue 14 step 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jelou_bridge::cli::main()
}
