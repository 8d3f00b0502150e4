#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proto_core::TlsConfigs;

static TLS: OnceLock<TlsConfigs> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let tls = TLS.get_or_init(proto_core::fuzzing::test_tls);
    proto_core::fuzzing::s2s_inbound(tls, data);
});
