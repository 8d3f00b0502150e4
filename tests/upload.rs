//! HTTP file upload (XEP-0363) end to end: slixmpp's `xep_0363` finds the service, gets a slot
//! and PUTs a file over HTTPS (aiohttp, checking the server's certificate); a second client gets
//! the URL in a `jabber:x:oob` message and downloads the file whole, by range and by HEAD. The
//! refusals (a file over the limit, PUTs unlike their slot, a forged token, a second PUT) get
//! their errors, and the upload directory holds exactly the files that were uploaded. (The
//! Kontalk client's version 0.2 is in `kontalk.rs`.)

use super::*;

per_runtime!(slixmpp_uploads_a_file_and_a_contact_downloads_it);

/// The files in the server's upload directory.
pub(crate) fn stored_files(server: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.dir.path().join("data/uploads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn slixmpp_uploads_a_file_and_a_contact_downloads_it(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::start(ServerOptions {
        upload: true,
        extra_toml: String::new(),
        ..ServerOptions::with_users(rt, &[ALICE, BOB])
    });
    let ca = server.dir.path().join("data/tls/cert.pem");
    let mut client = slix(
        &python,
        &server,
        "upload.py",
        Tls::StartTls,
        &[
            "--jid-a",
            ALICE.0,
            "--password-a",
            ALICE.1,
            "--jid-b",
            BOB.0,
            "--password-b",
            BOB.1,
            "--ca",
            &ca.display().to_string(),
            "--size",
            "300000",
            "--timeout",
            "60",
        ],
    );
    // slixmpp's own HTTP session trusts the system's authorities: the server's self-signed
    // certificate is one here, as a deployment's would be.
    client.env("SSL_CERT_FILE", &ca);
    let out = run(client, None, CLIENT_TIMEOUT);
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "{}\n{}",
        out.describe(),
        server.log_report()
    );
    let url = out.value("UPLOADED").expect("an UPLOADED line").to_owned();
    assert!(
        url.starts_with(&format!("https://localhost:{}/upload/", server.upload_port)),
        "{url}"
    );
    assert_eq!(
        out.value("DOWNLOADED").map(|v| v.split(' ').next()),
        Some(Some("300000"))
    );
    for refusal in [
        "too-large not-acceptable",
        "longer 413",
        "shorter 400",
        "other-type 415",
        "forged 403",
        "again 409",
    ] {
        assert!(
            out.has_line(&format!("REFUSED {refusal}")),
            "{refusal}\n{}",
            out.describe()
        );
    }
    // Two files, the photo and the note; nothing of the refused PUTs.
    let files = stored_files(&server);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.len() == 40), "{files:?}");
}
