//! The Centrifugo command decoder: any frame a client sends, newline batches included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{decode_frame, Command};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time they reach the decoder.
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    for command in decode_frame(frame) {
        let _ = command;
    }
    // A single line goes through the same path as one line of a batch.
    let _ = Command::decode(frame);
});
