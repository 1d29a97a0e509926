//! Reads the figures the harness records out of an `iperf3 -J` output file.
//!
//! TCP: the receiver's throughput and byte count (`end.sum_received`). UDP: the receiver's
//! throughput, byte count and loss percentage. An iperf3 `error` is returned as an error.

use std::io;
use std::path::Path;

use serde_json::Value;

/// Prints `gbps X`, `bytes N` and, for UDP, `loss_pct X`, one per line.
pub fn summary(file: &Path) -> io::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("{e}")))?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        return Err(invalid(format!("iperf3: {error}")));
    }
    let end = &json["end"];
    let received = if end["sum_received"].is_object() {
        &end["sum_received"]
    } else {
        &end["sum"]
    };
    let bits = received["bits_per_second"]
        .as_f64()
        .ok_or_else(|| invalid("no end.sum_received.bits_per_second".into()))?;
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    println!("gbps {:.3}", bits / 1e9);
    println!("bytes {bytes:.0}");
    if let Some(loss) = received["lost_percent"].as_f64() {
        println!("loss_pct {loss:.3}");
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
