//! loadgen over wss:// against an in-test rustls server with a certificate
//! made here: bursts larger than loadgen's read buffer and frames spanning
//! several TLS records all arrive, slow clients keep their rate, and a server
//! the CA does not vouch for is refused.

mod common;

use common::{accept_upgrade, frame, loadgen, read_client_frame, update};
use rustls::pki_types::PrivateKeyDer;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Updates per client: about 600 KB, more than one 256 KiB read.
const BURST: u64 = 2000;

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    Pki {
        dir,
        ca,
        server: Arc::new(server),
    }
}

/// Serves wss: upgrade, subscribe, then a ping, BURST updates on "A" in one
/// go and one 70 KB update; counts the pongs it gets back.
fn serve(config: Arc<rustls::ServerConfig>, pongs: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let tcp = tcp.unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let (config, pongs) = (config.clone(), pongs.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    // A client that refuses the certificate ends it here.
                    if s.conn.complete_io(&mut s.sock).is_err() {
                        return;
                    }
                }
                let head = accept_upgrade(&mut s);
                assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
                let (op, sub) = read_client_frame(&mut s).unwrap();
                assert_eq!(op, 1);
                let sub: serde_json::Value = serde_json::from_slice(&sub).unwrap();
                assert_eq!(sub["channels"], serde_json::json!(["A"]));
                // Past the (0 s) warmup, so every sample counts.
                std::thread::sleep(Duration::from_millis(300));
                let mut out = frame(true, 9, b"tls");
                for seq in 1..=BURST {
                    out.extend(frame(true, 1, &update("A", seq, 200)));
                }
                out.extend(frame(true, 1, &update("A", BURST + 1, 70_000)));
                s.write_all(&out).unwrap();
                s.flush().unwrap();
                while let Ok((op, p)) = read_client_frame(&mut s) {
                    if op == 0xA {
                        assert_eq!(p, b"tls");
                        pongs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    port
}

#[test]
fn wss_delivers_every_update() {
    let p = pki("ok");
    let pongs = Arc::new(AtomicU64::new(0));
    let port = serve(p.server.clone(), pongs.clone());
    let url = format!("wss://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--tls-ca",
        p.ca.to_str().unwrap(),
        "--connections",
        "4",
        "--channels",
        "A",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--threads",
        "2",
        "--json",
    ]);
    let _ = std::fs::remove_dir_all(&p.dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_client = BURST + 1;
    assert_eq!(v["connected"], 4, "{v}");
    assert_eq!(v["deliveries"], 4 * per_client, "{v}");
    assert_eq!(v["gaps"], 0);
    assert_eq!(v["disconnects"], 0);
    assert_eq!(v["latency_us"]["count"], 4 * per_client);
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pongs.load(Ordering::Relaxed), 4);
}

#[test]
fn wss_refuses_a_server_the_ca_does_not_vouch_for() {
    let served = pki("served");
    let other = pki("other");
    let port = serve(served.server.clone(), Arc::new(AtomicU64::new(0)));
    let url = format!("wss://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--tls-ca",
        other.ca.to_str().unwrap(),
        "--connections",
        "2",
        "--channels",
        "A",
        "--duration",
        "1",
        "--handshake-timeout",
        "3",
        "--json",
    ]);
    let _ = std::fs::remove_dir_all(&served.dir);
    let _ = std::fs::remove_dir_all(&other.dir);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["connected"], 0);
    assert_eq!(v["connect_failures"], 2);
    let e = v["first_error"].as_str().unwrap_or_default();
    assert!(e.contains("certificate"), "{e}");
}

#[test]
fn wss_slow_clients_read_at_their_rate() {
    let p = pki("slow");
    let port = serve(p.server.clone(), Arc::new(AtomicU64::new(0)));
    let url = format!("wss://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--tls-ca",
        p.ca.to_str().unwrap(),
        "--connections",
        "4",
        "--channels",
        "A",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--slow-fraction",
        "0.5",
        "--slow-rate",
        "50",
        "--json",
    ]);
    let _ = std::fs::remove_dir_all(&p.dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["slow"]["clients"], 2);
    // Decrypted data held back for a slow client is still read later, at its rate.
    let slow_deliv = v["slow"]["deliveries"].as_u64().unwrap();
    assert!((10..=160).contains(&slow_deliv), "{v}");
    assert_eq!(v["slow"]["skipped"], 0);
    assert_eq!(v["gaps"], 0);
    assert_eq!(
        v["deliveries"].as_u64().unwrap(),
        2 * (BURST + 1) + slow_deliv
    );
}
