//! The committed fuzz corpus (`fuzz/corpus/`) replayed through the same decoders as the
//! cargo-fuzz targets, on stable Rust: every input a fuzz run found worth keeping must
//! still decode (or be refused) without a panic. The fuzzing itself is
//! `scripts/fuzz.sh` (nightly, cargo-fuzz).

use std::path::{Path, PathBuf};

use switchboard_protocol::protobuf::decode_stream;
use switchboard_protocol::socketio::{split_payload, EioPacket, SioPacket};
use switchboard_protocol::{decode_frame, Command};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

#[test]
fn centrifuge_json_corpus_decodes_without_panicking() {
    let mut commands = 0;
    for (_, data) in corpus("centrifuge_command") {
        let Ok(frame) = std::str::from_utf8(&data) else {
            continue;
        };
        commands += decode_frame(frame).filter(|c| c.is_ok()).count();
        let _ = Command::decode(frame);
    }
    // The seeds are mostly valid commands: a decoder that refused everything would pass
    // the no-panic check above without testing much.
    assert!(commands > 0, "no seed decoded to a command");
}

#[test]
fn centrifuge_protobuf_corpus_decodes_without_panicking() {
    for (_, data) in corpus("centrifuge_protobuf") {
        let _ = decode_stream(data.into());
    }
}

#[test]
fn socketio_corpus_decodes_without_panicking() {
    let mut events = 0;
    for (_, data) in corpus("socketio_packet") {
        let Ok(body) = std::str::from_utf8(&data) else {
            continue;
        };
        for packet in split_payload(body) {
            if let Ok(EioPacket::Message(message)) = EioPacket::decode(packet) {
                if let Ok(sio) = SioPacket::decode(message) {
                    events += usize::from(sio.event().is_ok());
                }
            }
        }
    }
    assert!(events > 0, "no seed decoded to a Socket.IO event");
}
