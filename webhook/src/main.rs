//! `lotabots-webhook serve | check`; everything lives in the library.
fn main() -> std::process::ExitCode {
    lotabots_webhook::cli::main()
}
