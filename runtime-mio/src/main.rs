//! `kontalkd`: the Kontalk XMPP server and its admin commands.
//!
//! The command line is [`kontalkd_store::cli`]; this binary gives it the runtime.

use std::process::ExitCode;

use kontalkd_store::cli::{self, Runner};

fn main() -> ExitCode {
    cli::main(&[Runner {
        name: "mio",
        about: "a hand-rolled mio readiness loop (the default)",
        run: runtime_mio::run_server,
    }])
}
