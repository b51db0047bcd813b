//! `lotabots-e2e`: see [`lotabots_e2e::cli`].

fn main() -> std::process::ExitCode {
    lotabots_e2e::cli::Args::parse_and_run()
}
