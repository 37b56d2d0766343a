use clap::Parser;

fn main() -> std::process::ExitCode {
    weft::cli::main(weft::cli::Cli::parse())
}
