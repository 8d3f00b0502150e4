//! `kontalkd`: the Kontalk XMPP server (mio runtime) and its admin commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kontalkd_store::{load_config, FileConfig, Store};

/// kontalkd: the Kontalk XMPP server.
///
/// Start it with `kontalkd run`. Without --config it serves the domain
/// `localhost` on 127.0.0.1 (port 5222 with STARTTLS, 5223 with direct TLS),
/// keeps its data in ./data and makes a self-signed certificate there on first
/// start. Print a commented example configuration with `kontalkd example-config`.
#[derive(Parser)]
#[command(name = "kontalkd", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults apply.
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        env = "KONTALKD_CONFIG"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Run,
    /// Create an account, e.g. `kontalkd adduser alice@localhost` (asks for the password).
    Adduser {
        /// The account: `user@domain` or just `user`.
        jid: String,
        /// The password; read from standard input when omitted.
        #[arg(long)]
        password: Option<String>,
    },
    /// Change the password of an account.
    Passwd {
        /// The account: `user@domain` or just `user`.
        jid: String,
        /// The new password; read from standard input when omitted.
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account.
    Deluser {
        /// The account: `user@domain` or just `user`.
        jid: String,
    },
    /// List the accounts, one JID per line.
    Users,
    /// Check the configuration file and report every bad value.
    Check,
    /// Print a commented example configuration file with every key at its default.
    ExampleConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ExampleConfig = cli.command {
        print!("{}", kontalkd_store::example_config());
        return ExitCode::SUCCESS;
    }
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            let name = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            eprintln!("kontalkd: the configuration {name} has errors:");
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    match run(cli.command, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kontalkd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, config: FileConfig) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Run => {
            env_logger::Builder::new()
                .filter_level(config.log_level)
                .parse_default_env()
                .init();
            runtime_mio::run_server(config)
        }
        Command::Check => {
            println!(
                "configuration OK: domain {}, clients on {}:{}{}, data in {}",
                config.core.domain,
                config.listen,
                config.c2s_port,
                config
                    .direct_tls_port
                    .map(|p| format!(" and {p} (direct TLS)"))
                    .unwrap_or_default(),
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Users => {
            let store = Store::open(&config.data_dir)?;
            for user in store.list_users()? {
                println!("{user}@{}", config.core.domain);
            }
            Ok(())
        }
        Command::Adduser { jid, password } => {
            let user = username(&jid, &config)?;
            let password = password_arg(password)?;
            Store::open(&config.data_dir)?.add_user(&user, &password)?;
            println!("created {user}@{}", config.core.domain);
            Ok(())
        }
        Command::Passwd { jid, password } => {
            let user = username(&jid, &config)?;
            let password = password_arg(password)?;
            Store::open(&config.data_dir)?.set_password(&user, &password)?;
            println!("changed the password of {user}@{}", config.core.domain);
            Ok(())
        }
        Command::Deluser { jid } => {
            let user = username(&jid, &config)?;
            Store::open(&config.data_dir)?.delete_user(&user)?;
            println!("deleted {user}@{}", config.core.domain);
            Ok(())
        }
        Command::ExampleConfig => unreachable!("handled before loading the configuration"),
    }
}

/// The username of `jid`, which must belong to the configured domain.
fn username(jid: &str, config: &FileConfig) -> Result<String, String> {
    match jid.split_once('@') {
        None => Ok(jid.to_owned()),
        Some((user, domain)) => {
            if domain.eq_ignore_ascii_case(&config.core.domain) {
                Ok(user.to_owned())
            } else {
                Err(format!(
                    "{jid}: this server hosts {}, not {domain}",
                    config.core.domain
                ))
            }
        }
    }
}

fn password_arg(given: Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err("no password given (use --password or type it on standard input)".into());
    }
    Ok(password)
}
