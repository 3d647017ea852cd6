//! `soma`: parses the command line and runs it (see `soma --help`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    soma_cli::run(soma_cli::Cli::parse()).await.into()
}
