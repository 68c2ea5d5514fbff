#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gannet_fuzz_targets::subnet_file(data));
