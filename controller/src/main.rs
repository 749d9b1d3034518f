//! The `sluice` binary.

fn main() -> std::process::ExitCode {
    sluice_controller::cli::Cli::parse_and_run()
}
