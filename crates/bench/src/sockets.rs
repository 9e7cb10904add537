//! Bytes the servers' TCP sockets sent, from the kernel's TCP counters (`ss -ti`): what
//! a delivery costs on the wire, framing and compression included, whatever the server
//! is written in (write, writev or send: /proc's I/O counters miss the last).

/// Payload bytes sent so far by the established TCP connections whose local port is
/// one of `ports`, or `None` when `ss` (iproute2) is missing or fails. Connections
/// closed since an earlier reading drop out of the sum, so read it around a window
/// in which connections stay open.
pub(crate) fn bytes_sent(ports: &[u16]) -> Option<u64> {
    if ports.is_empty() {
        return None;
    }
    let filter = ports
        .iter()
        .map(|p| format!("sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( {filter} )"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(sum_bytes_sent(&String::from_utf8_lossy(&out.stdout)))
}

/// The sum of every `bytes_sent:N` in `ss -ti` output.
fn sum_bytes_sent(text: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_connections_bytes_sent() {
        let text = "0 0 127.0.0.1:8000 127.0.0.1:50000\n\t cubic bytes_sent:120 bytes_acked:121 bytes_received:30\n\
                    0 0 127.0.0.1:8000 127.0.0.1:50001\n\t cubic bytes_sent:80 bytes_acked:81\n";
        assert_eq!(sum_bytes_sent(text), 200);
        assert_eq!(sum_bytes_sent(""), 0);
    }
}
