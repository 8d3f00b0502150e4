//! `kontalkd`: the Kontalk XMPP server and its admin commands.
//!
//! The command line is [`kontalkd_store::cli`]; this binary gives it the two
//! runtimes, `kontalkd run --runtime mio|smol` (mio by default).

use std::process::ExitCode;

use kontalkd_store::cli::{self, Runner};

fn main() -> ExitCode {
    cli::main(&[
        Runner {
            name: "mio",
            about: "a hand-rolled mio readiness loop (the default)",
            run: runtime_mio::run_server,
        },
        Runner {
            name: "smol",
            about: "smol's async reactor and executor (async-io, async-executor)",
            run: runtime_smol::run,
        },
    ])
}
