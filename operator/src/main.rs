fn main() -> std::process::ExitCode {
    lotabots_operator::cli::main()
}
