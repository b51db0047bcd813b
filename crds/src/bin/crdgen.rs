//! Writes the CRD manifests generated from the Rust types, or checks them (`--check`).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use lotabots_crds::crdgen;

/// Generate the lotabots CRD manifests from the Rust types.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Generate the lotabots CRD manifests from the Rust types",
    long_about = None
)]
struct Args {
    /// Directory to write the manifests to (or compare them in).
    #[arg(env = "CRDGEN_OUTPUT_DIR", default_value = crdgen::DEFAULT_OUTPUT_DIR)]
    output_dir: PathBuf,

    /// Compare instead of writing: exit 1 when a manifest differs from the types.
    #[arg(long, env = "CRDGEN_CHECK")]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ExitCode::from(crdgen::run(&args.output_dir, args.check) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }
}
