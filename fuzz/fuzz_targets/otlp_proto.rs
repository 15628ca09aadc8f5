#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skein_collector::fuzzing::otlp_proto(data));
