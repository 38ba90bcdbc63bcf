//! The `jelou-bridge` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    jelou_bridge::cli::main()
}
