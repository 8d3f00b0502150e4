//! `kontalkd`: the Kontalk XMPP server and its admin commands, on the mio
//! runtime.
//!
//! The command line is [`kontalkd_host::cli`]; `kontalkd run` serves on mio.
//! The same server on smol is the binary `kontalkd-smol` of runtime-smol.

use std::process::ExitCode;

use kontalkd_host::cli::{self, Runner};

fn main() -> ExitCode {
    cli::main(Runner {
        binary: "kontalkd",
        name: "mio",
        about: "a hand-rolled mio readiness loop",
        run: runtime_mio::run_server,
    })
}
