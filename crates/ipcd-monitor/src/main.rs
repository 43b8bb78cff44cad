//! `ipcd`: the command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!("ipcd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("ipcd: the daemon and its subcommands are not built yet (see the monitor issue)");
            ExitCode::from(2)
        }
    }
}
