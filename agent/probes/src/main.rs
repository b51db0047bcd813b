//! `lotabots-probe-runner`: see [`lotabots_probes::cli`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    lotabots_probes::cli::main_with(&lotabots_probes::cli::Args::parse())
}
