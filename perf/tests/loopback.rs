//! End-to-end tests of `mtcp-perf client`/`server` on 127.0.0.1: every mode, the JSON report,
//! byte-exact verification, congestion control read-back, and a server that survives garbage.

mod common;

use common::{BIN, Server, client_json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

#[test]
fn bulk_upload_bytes_verified() {
    let s = Server::start();
    let (ok, v) = client_json(&s.addr, &["bulk", "-n", "8M", "--verify", "-P", "2"]);
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert_eq!(r["all_verified"], true, "{v:#}");
    assert_eq!(r["errors"], 0);
    for st in r["streams"].as_array().unwrap() {
        assert_eq!(st["bytes"], 8 * 1024 * 1024);
        assert_eq!(st["server_bytes"], 8 * 1024 * 1024);
        assert_eq!(st["direction"], "up");
        assert!(st["bits_per_second"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(r["sum"]["bytes"], 16 * 1024 * 1024);
}

#[test]
fn bulk_download_and_bidir_verified() {
    let s = Server::start();
    let (ok, v) = client_json(&s.addr, &["bulk", "-n", "4M", "--verify", "-R"]);
    assert!(ok, "{v:#}");
    let st = &v["result"]["streams"][0];
    assert_eq!(st["direction"], "down");
    assert_eq!(st["bytes"], 4 * 1024 * 1024);
    assert_eq!(st["verified"], true);

    let (ok, v) = client_json(
        &s.addr,
        &["bulk", "-t", "1s", "-i", "250ms", "--bidir", "--verify"],
    );
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert!(r["sum_up"]["bytes"].as_u64().unwrap() > 0);
    assert!(r["sum_down"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["all_verified"], true);
    let iv = r["intervals"].as_array().unwrap();
    assert!(iv.len() >= 3, "{iv:?}");
    assert_eq!(iv[0]["streams"].as_array().unwrap().len(), 2);
}

#[test]
fn bulk_congestion_is_set_on_both_ends() {
    let s = Server::start();
    let (ok, v) = client_json(&s.addr, &["--congestion", "cubic", "bulk", "-n", "1M"]);
    assert!(ok, "{v:#}");
    let st = &v["result"]["streams"][0];
    assert_eq!(st["cc_client"], "cubic");
    assert_eq!(st["cc_server"], "cubic");
    assert!(st["tcp_info"]["snd_mss"].as_u64().unwrap() > 0);

    // An unknown algorithm is an error, not a silent fallback.
    let out = Command::new(BIN)
        .args([
            "client",
            "-c",
            &s.addr,
            "--congestion",
            "nosuchcc",
            "bulk",
            "-n",
            "1M",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn bulk_text_output_has_intervals() {
    let s = Server::start();
    let out = Command::new(BIN)
        .args([
            "client", "-c", &s.addr, "bulk", "-t", "600ms", "-i", "200ms", "-P", "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("[SUM]").count() >= 3, "{text}");
    assert!(text.contains("Gbit/s"), "{text}");
}

#[test]
fn rr_closed_and_open_loop() {
    let s = Server::start();
    let (ok, v) = client_json(
        &s.addr,
        &["rr", "-t", "500ms", "--concurrency", "2", "-s", "64"],
    );
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert!(r["messages"].as_u64().unwrap() > 100);
    for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(r["latency"][k].as_f64().unwrap() > 0.0, "{k}: {v:#}");
    }
    assert!(r["latency"]["p50_us"].as_f64() <= r["latency"]["p99_us"].as_f64());

    let (ok, v) = client_json(
        &s.addr,
        &["rr", "-t", "1s", "--rate", "500", "--resp-size", "1000"],
    );
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert_eq!(r["open_loop"], true);
    let n = r["messages"].as_u64().unwrap();
    assert!((450..=510).contains(&n), "{n}");

    let (ok, v) = client_json(&s.addr, &["rr", "-n", "1000"]);
    assert!(ok);
    assert_eq!(v["result"]["messages"], 1000);
}

#[test]
fn ttfb_churn_idle() {
    let s = Server::start();
    let (ok, v) = client_json(&s.addr, &["ttfb", "-n", "50", "-s", "32"]);
    assert!(ok, "{v:#}");
    let r = &v["result"];
    assert_eq!(r["samples"], 50);
    assert!(r["ttfb"]["p50_us"].as_f64().unwrap() > 0.0);
    assert!(r["ttfb"]["p50_us"].as_f64() >= r["connect"]["p50_us"].as_f64());

    let (ok, v) = client_json(&s.addr, &["churn", "-t", "500ms", "--concurrency", "2"]);
    assert!(ok, "{v:#}");
    assert!(v["result"]["connections"].as_u64().unwrap() > 10);
    assert!(v["result"]["connections_per_second"].as_f64().unwrap() > 0.0);

    let (ok, v) = client_json(&s.addr, &["idle", "-N", "50", "-t", "500ms"]);
    assert!(ok, "{v:#}");
    assert_eq!(v["result"]["alive_at_end"], 50);
    assert!(v["result"]["held_seconds"].as_f64().unwrap() >= 0.5);
}

#[test]
fn server_survives_garbage() {
    let s = Server::start();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &b"MTPF\xff\xff\xff\xff"[..],
        &b"MTPF\x00\x00\x00\x05nope!"[..],
        &b"MTPF\x00\x00\x00\x20{\"mode\":\"echo\",\"req\":0}       "[..],
    ] {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(junk).unwrap();
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf); // the server closes it
    }
    let (ok, v) = client_json(&s.addr, &["rr", "-n", "10"]);
    assert!(ok, "{v:#}");
}
