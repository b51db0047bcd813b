//! `lotabots-gpu-selftest`: see the crate README.

fn main() -> std::process::ExitCode {
    lotabots_gpu_selftest::cli::main()
}
