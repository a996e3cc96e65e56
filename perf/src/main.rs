//! `mtcp-perf`: iperf-style load tool and WAN emulator (being built: issue 4).

fn main() {
    println!("mtcp-perf: not built yet");
}
