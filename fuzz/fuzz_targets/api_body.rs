//! Server API request bodies: every method's decoder and checks, and `batch`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::api::decode::METHODS;
use switchboard::api::wire::{BatchRequest, Command};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method so one corpus covers all of them.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match METHODS.get(usize::from(pick) % (METHODS.len() + 1)) {
        Some(method) => {
            if let Ok(command) = Command::decode(method, body) {
                let _ = command.validate();
            }
        }
        None => {
            let _ = BatchRequest::decode(body);
        }
    }
});
