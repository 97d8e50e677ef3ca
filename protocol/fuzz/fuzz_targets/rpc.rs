//! cargo-fuzz target: connection bytes into the export, seeded by the recorded client
//! sessions (see `protocol::fuzzing`). Inputs starting with 0xff are raw connection
//! bytes; others seed the structure-aware mutation of a recorded session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::fuzzing::{one_input, Recording, Target};
use std::sync::OnceLock;

fn recording() -> &'static Recording {
    static R: OnceLock<Recording> = OnceLock::new();
    R.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        Recording::load(&dir).expect("protocol/fuzz/seeds")
    })
}

fuzz_target!(|data: &[u8]| {
    let rec = recording();
    // A fresh store per input, so that every input is reproducible alone.
    let target = Target::new(&rec.secret, &rec.identity);
    one_input(rec, &target, data);
});
