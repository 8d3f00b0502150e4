//! `check` means `run` will start: what `run` refuses (a certificate that cannot be read, a key
//! of another certificate, a certificate for another domain), `check` refuses too, naming it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::support::{run, toml_string, Run, Runtime, TempDir, TestServer};

per_runtime!(check_refuses_what_run_refuses_and_names_it);

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
}
