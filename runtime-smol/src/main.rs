//! `kontalkd-smol`: the Kontalk XMPP server and its admin commands, on the
//! smol runtime.
//!
//! The command line is [`kontalkd_host::cli`], the same as `kontalkd`'s
//! (runtime-mio); `kontalkd-smol run` serves on smol.

use std::process::ExitCode;

use kontalkd_host::cli::{self, Runner};

fn main() -> ExitCode {
    cli::main(Runner {
        binary: "kontalkd-smol",
        name: "smol",
        about: "smol's async reactor and executor (async-io, async-executor)",
        run: runtime_smol::run,
    })
}
