fn main() -> std::process::ExitCode {
    lotabots_agent::cli::main()
}
