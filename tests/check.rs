//! `check` means `run` will start: what `run` refuses (a certificate that cannot be read, a key
//! of another certificate, a certificate for another domain), `check` refuses too, naming it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::support::{run, toml_string, Run, Runtime, TempDir, TestServer};

per_runtime!(
    check_refuses_what_run_refuses_and_names_it,
    net_fingerprint_is_the_certificates_and_check_names_bad_network_values,
);

fn config(dir: &Path, name: &str, domain: &str, cert: &Path, key: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[server]\ndomain = {}\ndata_dir = {}\n[c2s]\nport = 1\ndirect_tls_port = 0\n\
         [tls]\ncertificate = {}\nprivate_key = {}\n",
        toml_string(domain),
        toml_string(&dir.join(format!("data-{name}")).to_string_lossy()),
        toml_string(&cert.to_string_lossy()),
        toml_string(&key.to_string_lossy()),
    );
    fs::write(&path, text).unwrap();
    path
}

fn kontalkd(rt: Runtime, config: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(rt.binary());
    cmd.arg("--config").arg(config).args(args);
    run(cmd, None, Duration::from_secs(20))
}

fn check_refuses_what_run_refuses_and_names_it(rt: Runtime) {
    // Two generated certificates (for localhost), from two servers' first starts.
    let a = TestServer::with_users(rt, &[]);
    let b = TestServer::with_users(rt, &[]);
    let tls_a = a.dir.path().join("data/tls");
    let tls_b = b.dir.path().join("data/tls");
    let dir = TempDir::new("kontalkd-e2e-check");
    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "not a certificate\n").unwrap();

    let good = config(
        dir.path(),
        "good",
        "localhost",
        &tls_a.join("cert.pem"),
        &tls_a.join("key.pem"),
    );
    let out = kontalkd(rt, &good, &["check"]);
    out.assert_success();
    assert!(
        out.stdout.contains("configuration OK"),
        "{}",
        out.describe()
    );

    let cases = [
        (
            "missing",
            "localhost",
            dir.path().join("nowhere.pem"),
            tls_a.join("key.pem"),
            "cannot read certificate",
        ),
        (
            "garbage",
            "localhost",
            garbage.clone(),
            tls_a.join("key.pem"),
            "no certificate found",
        ),
        (
            "mismatch",
            "localhost",
            tls_a.join("cert.pem"),
            tls_b.join("key.pem"),
            "does not fit the certificate",
        ),
        (
            "other-domain",
            "example.org",
            tls_a.join("cert.pem"),
            tls_a.join("key.pem"),
            "is for localhost but the server's domain is example.org",
        ),
    ];
    for (name, domain, cert, key, says) in cases {
        let cfg = config(dir.path(), name, domain, &cert, &key);
        let checked = kontalkd(rt, &cfg, &["check"]);
        assert!(
            !checked.success() && checked.stderr.contains(says),
            "check of the {name} configuration should fail saying {says:?}\n{}",
            checked.describe()
        );
        let ran = kontalkd(rt, &cfg, &["run", "--runtime", rt.name()]);
        assert!(
            !ran.timed_out && !ran.success() && ran.stderr.contains(says),
            "run of the {name} configuration should refuse to start saying {says:?}\n{}",
            ran.describe()
        );
    }
    // The server's OpenPGP key (Kontalk) that is not one.
    let cfg = config(
        dir.path(),
        "bad-openpgp-key",
        "localhost",
        &tls_a.join("cert.pem"),
        &tls_a.join("key.pem"),
    );
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[kontalk]\nkey_file = {}\n",
        toml_string(&garbage.to_string_lossy())
    ));
    fs::write(&cfg, text).unwrap();
    let says = "is not a usable OpenPGP secret key";
    for args in [
        vec!["check"],
        vec!["run", "--runtime", rt.name()],
        vec!["fingerprint"],
    ] {
        let out = kontalkd(rt, &cfg, &args);
        assert!(
            !out.timed_out && !out.success() && out.stderr.contains(says),
            "{args:?} with a garbage server key should fail saying {says:?}\n{}",
            out.describe()
        );
    }
}

/// `dist/kontalkd.service` starts the binary the way it accepts: its `ExecStart` (with `check`
/// for `run`, and a config whose data directory is a temporary one) is a valid command line,
/// `ExecStartPre` checks the same file, and `systemd-analyze verify` accepts the unit (when
/// systemd-analyze is installed; without it that part says SKIP).
#[test]
fn the_systemd_unit_runs_the_binary_as_it_accepts() {
    let unit_path = super::support::repo_root().join("dist/kontalkd.service");
    let unit = fs::read_to_string(&unit_path).expect("dist/kontalkd.service");
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    for (key, want) in [
        ("User", "kontalkd"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("StateDirectory", "kontalkd"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("UMask", "0077"),
    ] {
        assert_eq!(value(key), [want], "{key}= in {}", unit_path.display());
    }
    assert!(value("ReadWritePaths")[0]
        .split(' ')
        .any(|p| p == "/var/lib/kontalkd"));
    assert!(!value("LimitNOFILE").is_empty());

    let start: Vec<&str> = value("ExecStart")[0].split(' ').collect();
    let pre: Vec<&str> = value("ExecStartPre")[0].split(' ').collect();
    assert_eq!(start[0], "/usr/local/bin/kontalkd", "{start:?}");
    assert_eq!(start.last(), Some(&"run"), "{start:?}");
    assert_eq!(pre[..pre.len() - 1], start[..start.len() - 1]);
    assert_eq!(pre.last(), Some(&"check"), "{pre:?}");

    // The unit's own arguments, but its config is a temporary file and the command `check`.
    let dir = TempDir::new("kontalkd-e2e-unit");
    let config = dir.path().join("kontalkd.toml");
    fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {}\n",
            toml_string(&dir.path().join("data").to_string_lossy())
        ),
    )
    .unwrap();
    let binary = Runtime::Mio.binary();
    let args: Vec<String> = start[1..]
        .iter()
        .map(|a| match *a {
            "/etc/kontalkd/kontalkd.toml" => config.to_string_lossy().into_owned(),
            "run" => "check".to_owned(),
            a => a.to_owned(),
        })
        .collect();
    assert!(
        args.iter().any(|a| *a == config.to_string_lossy()),
        "{args:?}"
    );
    let mut cmd = Command::new(&binary);
    cmd.args(&args);
    let out = run(cmd, None, Duration::from_secs(20));
    out.assert_success();
    assert!(
        out.stdout.contains("configuration OK"),
        "{}",
        out.describe()
    );

    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze is missing; the unit's syntax is not verified");
        return;
    };
    assert!(analyze.status.success());
    let local = dir.path().join("kontalkd.service");
    fs::write(
        &local,
        unit.replace("/usr/local/bin/kontalkd", &binary.to_string_lossy()),
    )
    .unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&local);
    let out = run(cmd, None, Duration::from_secs(30));
    assert!(
        out.success() && out.stderr.trim().is_empty(),
        "systemd-analyze verify {}\n{}",
        local.display(),
        out.describe()
    );
}

/// The DER of the first certificate of a PEM file.
fn first_certificate_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

/// `net-fingerprint` prints the SHA-256 of the server's certificate (made first when there is
/// none, as the first start would), in the form `[[net.servers]]` takes; `check` names every
/// bad value of `[net]`, and passes a list with this server's own entry and another server's.
fn net_fingerprint_is_the_certificates_and_check_names_bad_network_values(rt: Runtime) {
    use sha2::Digest;
    let dir = TempDir::new("kontalkd-e2e-net-config");
    let data = dir.path().join("data");
    let write = |name: &str, net: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        fs::write(
            &path,
            format!(
                "[server]\ndomain = \"kontalk.net\"\ndata_dir = {}\n[c2s]\nport = 1\n\
                 direct_tls_port = 0\n{net}",
                toml_string(&data.to_string_lossy())
            ),
        )
        .unwrap();
        path
    };
    let alone = write("alone", "");
    let out = kontalkd(rt, &alone, &["net-fingerprint"]);
    out.assert_success();
    let printed = out.stdout.trim().to_owned();
    let pem = fs::read_to_string(data.join("tls/cert.pem")).expect("the certificate was made");
    let digest = sha2::Sha256::digest(first_certificate_der(&pem));
    let expected: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(printed, expected.join(":"), "{}", out.describe());
    // Asked again: the same certificate, the same fingerprint.
    let again = kontalkd(rt, &alone, &["net-fingerprint"]);
    assert_eq!(again.stdout.trim(), printed);

    let good = write(
        "good",
        &format!(
            "[net]\nhost = \"beta.kontalk.net\"\n\
             [[net.servers]]\nhost = \"beta.kontalk.net\"\nfingerprint = \"{printed}\"\n\
             [[net.servers]]\nhost = \"prime.kontalk.net\"\naddress = \"127.0.0.1:15270\"\n\
             fingerprint = \"{}\"\n",
            "ab".repeat(32)
        ),
    );
    let out = kontalkd(rt, &good, &["check"]);
    out.assert_success();
    assert!(
        out.stdout
            .contains("network kontalk.net: this server is beta.kontalk.net, Net on 0.0.0.0:5270, 1 other servers (1 enabled)"),
        "{}",
        out.describe()
    );

    assert!(!out.stderr.contains("warning"), "{}", out.describe());
    // Its own entry names another certificate, and another server has this
    // one: warned about, not refused (the other servers' lists count).
    let stale = write(
        "stale",
        &format!(
            "[net]\nhost = \"beta.kontalk.net\"\n\
             [[net.servers]]\nhost = \"beta.kontalk.net\"\nfingerprint = \"{}\"\n\
             [[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"{printed}\"\n",
            "cd".repeat(32)
        ),
    );
    let out = kontalkd(rt, &stale, &["check"]);
    out.assert_success();
    assert!(
        out.stderr.contains("lists CD:CD:CD")
            && out
                .stderr
                .contains("for this server (beta.kontalk.net), but its certificate is")
            && out
                .stderr
                .contains("prime.kontalk.net has this server's certificate"),
        "{}",
        out.describe()
    );

    let bad = write(
        "bad",
        "[net]\nhost = \"kontalk.net\"\nport = 0\n\
         [[net.servers]]\nhost = \"prime.kontalk.net\"\nfingerprint = \"AB:CD\"\n\
         address = \"prime.kontalk.net\"\n",
    );
    let out = kontalkd(rt, &bad, &["check"]);
    assert!(!out.success(), "{}", out.describe());
    for key in [
        "net.host",
        "net.port",
        "net.servers[0].fingerprint",
        "net.servers[0].address",
    ] {
        assert!(out.stderr.contains(key), "{key} named: {}", out.describe());
    }
}
