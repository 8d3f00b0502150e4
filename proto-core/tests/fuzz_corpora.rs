//! Replays every seed and crash-regression input in `fuzz/corpus` through the
//! fuzz targets' entry points (`proto_core::fuzzing`), on stable, as part of
//! `cargo test`. It lives here, outside the crate's sources, because it reads
//! files: the core itself does no I/O.

use proto_core::fuzzing::{
    c2s_postauth, c2s_preauth, dns_answers, http_upload, jid, kontalk_keys, kontalk_register,
    net_link, s2s_inbound, sasl, sm_ops, stanza_roundtrip,
};
use proto_core::testing::test_tls;

#[test]
fn replay_fuzz_corpora() {
    let tls = test_tls();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Target<'a> = (&'a str, &'a dyn Fn(&[u8]));
    let targets: [Target; 12] = [
        ("c2s_preauth", &|d| c2s_preauth(&tls, d)),
        ("c2s_postauth", &|d| c2s_postauth(&tls, d)),
        ("sasl", &|d| sasl(d)),
        ("stanza_roundtrip", &|d| stanza_roundtrip(d)),
        ("jid", &|d| jid(d)),
        ("sm_ops", &|d| sm_ops(&tls, d)),
        ("kontalk_keys", &|d| kontalk_keys(d)),
        ("kontalk_register", &|d| kontalk_register(&tls, d)),
        ("net_link", &|d| net_link(&tls, d)),
        ("dns_answers", &|d| dns_answers(d)),
        ("s2s_inbound", &|d| s2s_inbound(&tls, d)),
        ("http_upload", &|d| http_upload(d)),
    ];
    let mut total = 0;
    for (name, run) in targets {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            // A fuzzer running meanwhile may have removed the file.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            run(&data);
            total += 1;
        }
    }
    assert!(total >= 8, "the corpora are missing");
}
