//! The `kontalkd` command line: `run` on one of the runtimes, and the admin
//! commands (accounts, configuration check, example configuration, and the
//! commands for a running server, sent to its admin socket with
//! [`crate::control::send_admin`]).
//!
//! The binary gives [`main`] the runtimes it was built with; everything else
//! (parsing, configuration, logging, accounts) is the same for all of them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sha2::Digest;

use kontalkd_store::Store;

use crate::control::{send_admin, AdminError};
use crate::runtime::Error;
use crate::{load_config, FileConfig};

/// The runtime a server binary starts with `run`.
#[derive(Clone, Copy)]
pub struct Runner {
    /// The binary's name, for `--help`, `--version` and messages.
    pub binary: &'static str,
    /// The runtime's name, the one value `run --runtime` accepts (and
    /// `KONTALKD_RUNTIME`).
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Runs the server until it is stopped (SIGINT/SIGTERM).
    pub run: fn(FileConfig) -> Result<(), Error>,
}

/// kontalkd: the Kontalk XMPP server.
///
/// Start it with `kontalkd run`. Without --config it serves the domain
/// `localhost` on 127.0.0.1 (port 5222 with STARTTLS, 5223 with direct TLS),
/// keeps its data in ./data and makes a self-signed certificate there on first
/// start. Print a commented example configuration with `kontalkd example-config`.
#[derive(Parser)]
#[command(
    name = "kontalkd",
    version,
    about = "kontalkd: the Kontalk XMPP server",
    long_about
)]
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
    Run {
        /// The runtime that drives the protocol core: each binary has its own (`kontalkd` mio,
        /// `kontalkd-smol` smol); the same configuration works on each.
        #[arg(long, value_name = "NAME", env = "KONTALKD_RUNTIME")]
        runtime: Option<String>,
    },
    /// Create an account, e.g. `kontalkd adduser alice@localhost` (asks for the password).
    Adduser {
        /// The account: `user@domain` or just `user`.
        jid: String,
        /// The password; asked twice on a terminal (no echo), or read from standard input.
        #[arg(long)]
        password: Option<String>,
    },
    /// Change the password of an account.
    Passwd {
        /// The account: `user@domain` or just `user`.
        jid: String,
        /// The new password; asked twice on a terminal (no echo), or read from standard input.
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account. While the server runs, this goes through its admin socket so that the
    /// account's sessions end first; otherwise it works on the database.
    Deluser {
        /// The account: `user@domain` or just `user`.
        jid: String,
    },
    /// Show the running server's state: version, uptime, connections, sessions, memory, queues.
    Status,
    /// List the running server's sessions: who, from where, since when, with which features.
    Sessions,
    /// List the running server's federation (server-to-server) streams: direction, domains,
    /// how each was authenticated (certificate or dialback), queued stanzas.
    S2s,
    /// End the sessions of an account (a bare JID) or one of them (a full JID).
    Kick {
        /// `user@domain` for every session, `user@domain/resource` for one.
        jid: String,
    },
    /// Clear the login lockout (the failed logins) of an address, or of every address.
    Unlock {
        /// The address, e.g. `203.0.113.7`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        address: Option<String>,
        /// Clear every address.
        #[arg(long)]
        all: bool,
    },
    /// List the accounts, one JID per line.
    Users,
    /// Write a consistent copy of the database to FILE (safe while the server runs).
    Backup {
        /// The copy to write; it must not exist.
        file: PathBuf,
    },
    /// Check the configuration file and report every bad value.
    Check,
    /// Print the fingerprint of the server's OpenPGP key (Kontalk clients and
    /// the servers of a Kontalk network know the server by it).
    Fingerprint,
    /// Print the SHA-256 fingerprint of the server's TLS certificate, for the `[[net.servers]]`
    /// lists of the other servers of a Kontalk network (the self-signed certificate is made first
    /// if there is none yet, as the first start would).
    NetFingerprint,
    /// Print a commented example configuration file with every key at its default.
    ExampleConfig,
}

/// The command line of `runner`'s binary: its name, and `run --runtime`
/// accepting its runtime only.
fn command(runner: Runner) -> clap::Command {
    let value = PossibleValue::new(runner.name).help(runner.about);
    Cli::command()
        .name(runner.binary)
        .bin_name(runner.binary)
        .mut_subcommand("run", |run| {
            run.mut_arg("runtime", |arg| {
                arg.value_parser(PossibleValuesParser::new([value]))
                    .default_value(runner.name)
            })
        })
}

/// Parses `args` with `command`. `--config` is global, but `example-config`
/// reads no configuration (it prints the built-in defaults), so it is refused
/// there rather than silently ignored; `KONTALKD_CONFIG` in the environment
/// is no error.
fn parse<I, T>(mut command: clap::Command, args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command.try_get_matches_from_mut(args)?;
    let example = matches.subcommand_matches("example-config");
    let given = |m: &clap::ArgMatches| {
        m.value_source("config") == Some(clap::parser::ValueSource::CommandLine)
    };
    if matches.subcommand_name() == Some("example-config")
        && (given(&matches) || example.is_some_and(given))
    {
        return Err(command.error(
            clap::error::ErrorKind::ArgumentConflict,
            "example-config prints the built-in defaults and reads no configuration file; \
             drop --config (check a file with `--config FILE check`)",
        ));
    }
    Cli::from_arg_matches(&matches)
}

/// Parses the command line and runs the command; `run` starts the server on
/// the binary's runtime.
pub fn main(runner: Runner) -> ExitCode {
    let cli = match parse(command(runner), std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::ExampleConfig = cli.command {
        print!("{}", crate::example_config());
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
            eprintln!("{}: the configuration {name} has errors:", runner.binary);
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    match run(cli.command, config, runner) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", runner.binary);
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, config: FileConfig, runner: Runner) -> Result<(), Error> {
    match command {
        Command::Run { runtime } => {
            // clap accepts only the binary's own runtime.
            debug_assert!(runtime.is_none_or(|r| r == runner.name));
            crate::logging::init(&config)?;
            log::info!(
                "{} {} starting on the {} runtime",
                runner.binary,
                env!("CARGO_PKG_VERSION"),
                runner.name
            );
            (runner.run)(config)
        }
        Command::Check => {
            let mut findings = crate::tls::check_identity(&config, crate::runtime::unix_now());
            // The server's OpenPGP key, as run loads it.
            let (key, generated) = crate::kontalk::key_path(&config);
            if !generated || key.exists() {
                if let Err(e) = crate::kontalk::load_key(&key) {
                    findings.errors.push(e);
                }
            }
            // The push credentials, as run loads them.
            if let Some(push) = &config.push {
                if let Err(e) = crate::push::Credentials::load(&push.credentials) {
                    findings.errors.push(e);
                }
            }
            for w in &findings.warnings {
                eprintln!("warning: {w}");
            }
            if !findings.errors.is_empty() {
                return Err(format!(
                    "the server would not start:\n{}",
                    findings
                        .errors
                        .iter()
                        .map(|e| format!("  {e}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
                .into());
            }
            let (cert, _, generated) = crate::tls::identity_paths(&config);
            if generated && !cert.exists() {
                println!(
                    "no certificate yet: a self-signed one for {} is made in {} at the first start",
                    config.core.domain,
                    cert.display()
                );
            }
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
            if let (Some(net), Some(listener)) = (&config.core.net, config.net_listener) {
                let enabled = net.peers.iter().filter(|p| p.enabled).count();
                println!(
                    "network {}: this server is {}, Net on {listener}, {} other servers \
                     ({enabled} enabled)",
                    config.core.domain,
                    net.host,
                    net.peers.len()
                );
            }
            Ok(())
        }
        Command::Backup { file } => {
            let store = open_accounts(&config, false)?;
            let accounts = store.backup_to(&file)?;
            println!(
                "backed up {} to {} ({accounts} accounts)",
                Store::path_in(&config.data_dir).display(),
                file.display()
            );
            Ok(())
        }
        Command::Users => {
            let store = open_accounts(&config, false)?;
            for user in store.list_users()? {
                println!("{user}@{}", config.core.domain);
            }
            Ok(())
        }
        Command::Adduser { jid, password } => {
            let user = username(&jid, &config)?;
            let password = password_arg(password)?;
            open_accounts(&config, true)?.add_user(&user, &password)?;
            println!("created {user}@{}", config.core.domain);
            Ok(())
        }
        Command::Passwd { jid, password } => {
            let user = username(&jid, &config)?;
            let password = password_arg(password)?;
            open_accounts(&config, false)?.set_password(&user, &password)?;
            println!("changed the password of {user}@{}", config.core.domain);
            Ok(())
        }
        Command::Deluser { jid } => {
            let user = username(&jid, &config)?;
            match admin(&config, &format!("deluser {user}")) {
                Err(e) if matches!(*e, AdminError::NotRunning(_)) => {
                    // No server: the database alone.
                    open_accounts(&config, false)?.delete_user(&user)?;
                    println!("deleted {user}@{}", config.core.domain);
                    Ok(())
                }
                other => other.map_err(|e| -> Error { e }),
            }
        }
        Command::Fingerprint => {
            let (path, generated) = crate::kontalk::key_path(&config);
            if generated && !path.exists() {
                return Err(format!(
                    "no server key yet: it is generated in {} at the first start",
                    path.display()
                )
                .into());
            }
            let key = crate::kontalk::load_key(&path)?;
            println!("{}", key.fingerprint());
            Ok(())
        }
        Command::NetFingerprint => {
            let identity = crate::tls::load_or_create_identity(&config)?;
            let leaf = identity
                .cert_chain
                .first()
                .expect("a chain has a certificate");
            let digest: [u8; 32] = sha2::Sha256::digest(leaf.as_ref()).into();
            println!("{}", crate::config::format_fingerprint(&digest));
            Ok(())
        }
        Command::Status => admin(&config, "status").map_err(|e| -> Error { e }),
        Command::Sessions => admin(&config, "sessions").map_err(|e| -> Error { e }),
        Command::S2s => admin(&config, "s2s").map_err(|e| -> Error { e }),
        Command::Kick { jid } => {
            if jid.split_whitespace().count() != 1 {
                return Err(format!("{jid:?}: not a JID").into());
            }
            admin(&config, &format!("kick {jid}")).map_err(|e| -> Error { e })
        }
        Command::Unlock { address, all } => {
            let target = if all {
                "all".to_owned()
            } else {
                address.unwrap_or_default()
            };
            if target.split_whitespace().count() != 1 {
                return Err(format!("{target:?}: not an address").into());
            }
            admin(&config, &format!("unlock {target}")).map_err(|e| -> Error { e })
        }
        Command::ExampleConfig => unreachable!("handled before loading the configuration"),
    }
}

/// Runs `command` on the running server's admin socket: its answer goes to
/// standard output, or is the error.
fn admin(config: &FileConfig, command: &str) -> Result<(), Box<AdminError>> {
    match send_admin(&config.data_dir, command) {
        Ok((true, text)) => {
            print!("{text}");
            Ok(())
        }
        Ok((false, text)) => Err(Box::new(AdminError::Failed(text.trim_end().to_owned()))),
        Err(e) => Err(Box::new(e)),
    }
}

/// The store for an account command, which says on standard error which
/// database it uses. Only `create` (adduser) makes a database where there is
/// none; the other commands refuse, rather than leave an empty one behind in
/// a directory the operator did not mean.
fn open_accounts(config: &FileConfig, create: bool) -> Result<Store, Error> {
    let path = Store::path_in(&config.data_dir);
    let store = if create {
        let new = !path.exists();
        let store = Store::open(&config.data_dir)?;
        if new {
            eprintln!("created the database {}", path.display());
        }
        store
    } else {
        Store::open_existing(&config.data_dir)?
    };
    eprintln!("database: {}", path.display());
    Ok(store)
}

/// The username of `jid`, which must belong to the configured domain.
fn username(jid: &str, config: &FileConfig) -> Result<String, String> {
    crate::control::username(jid, &config.core.domain)
}

/// The password of `adduser`/`passwd`: `--password`, else from a terminal
/// twice without echo ("Password:", "Again:"), else (a pipe, a script) the
/// first line of standard input.
fn password_arg(given: Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let again = prompt_hidden("Again: ")?;
        confirmed(first, again)
    } else {
        read_password(&mut stdin.lock())
    }
}

/// The first line of `input`, without its line end; an empty one is refused.
fn read_password(input: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err("no password given (use --password or type it on standard input)".into());
    }
    Ok(password)
}

/// The password typed twice, when both are the same and not empty.
fn confirmed(first: String, again: String) -> Result<String, String> {
    if first != again {
        return Err("the two passwords differ; nothing changed".into());
    }
    if first.is_empty() {
        return Err("no password given; nothing changed".into());
    }
    Ok(first)
}

/// Asks for a line on the terminal with echo off (restored afterwards).
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal's mode: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)
        .map_err(|e| format!("cannot turn the terminal's echo off: {e}"))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_says_what_the_program_is() {
        let help = Cli::command().render_help().to_string();
        assert!(
            help.starts_with("kontalkd: the Kontalk XMPP server"),
            "{help}"
        );
    }

    fn test_runner() -> Runner {
        Runner {
            binary: "kontalkd",
            name: "mio",
            about: "the mio runtime",
            run: |_| Ok(()),
        }
    }

    #[test]
    fn example_config_refuses_config() {
        for args in [
            &["kontalkd", "--config", "k.toml", "example-config"][..],
            &["kontalkd", "example-config", "--config", "k.toml"],
            &["kontalkd", "example-config", "-c", "k.toml"],
        ] {
            let err = parse(command(test_runner()), args).err().expect("refused");
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
            assert!(err.to_string().contains("drop --config"), "{err}");
        }
        let cli = parse(command(test_runner()), ["kontalkd", "example-config"]).unwrap();
        assert!(matches!(cli.command, Command::ExampleConfig));
        let cli = parse(
            command(test_runner()),
            ["kontalkd", "-c", "k.toml", "check"],
        )
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("k.toml")));
    }

    #[test]
    fn usernames_belong_to_the_domain() {
        let config = FileConfig::default();
        assert_eq!(username("alice", &config).unwrap(), "alice");
        assert_eq!(username("alice@LocalHost", &config).unwrap(), "alice");
        assert!(username("alice@example.org", &config).is_err());
    }

    #[test]
    fn a_piped_password_is_its_first_line() {
        let mut input = "s3cret pw\r\nignored\n".as_bytes();
        assert_eq!(read_password(&mut input).unwrap(), "s3cret pw");
        let mut input = "last line without end".as_bytes();
        assert_eq!(read_password(&mut input).unwrap(), "last line without end");
        for empty in ["", "\n"] {
            let err = read_password(&mut empty.as_bytes()).unwrap_err();
            assert!(err.contains("no password"), "{err}");
        }
    }

    #[test]
    fn a_typed_password_must_be_typed_the_same_twice() {
        assert_eq!(confirmed("pw".into(), "pw".into()).unwrap(), "pw");
        let err = confirmed("pw".into(), "pW".into()).unwrap_err();
        assert!(err.contains("differ"), "{err}");
        assert!(confirmed(String::new(), String::new()).is_err());
    }
}
