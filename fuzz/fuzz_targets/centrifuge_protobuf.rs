//! The Centrifugo Protobuf decoder: any binary frame a client sends, a stream of
//! length-delimited `Command`s or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::protobuf::decode_stream;

fuzz_target!(|data: &[u8]| {
    let _ = decode_stream(data.to_vec().into());
});
