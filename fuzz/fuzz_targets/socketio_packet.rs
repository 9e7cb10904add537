//! Engine.IO payloads and Socket.IO packets, as they arrive over long-polling or WebSocket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::socketio::{split_payload, EioPacket, SioPacket};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for packet in split_payload(body) {
        if let Ok(EioPacket::Message(message)) = EioPacket::decode(packet) {
            if let Ok(sio) = SioPacket::decode(message) {
                let _ = sio.event();
            }
        }
    }
});
