//! A lean GETATTR load generator (one TCP connection, many calls in flight), to measure
//! the server rather than a client library.
//!
//! `cargo run --release -p kura-protocol --example getattr_load -- PORT [SECONDS] [WINDOW] [EXPORT] [write FILE SERVER_PID]`
//! Speaks just enough ONC RPC by hand: MOUNT MNT for the export's root handle, then
//! NFSv3 GETATTR on it, keeping WINDOW calls outstanding. Prints calls per second.
//! With `write FILE SERVER_PID`: 1 MiB UNSTABLE WRITEs to the existing FILE instead,
//! WINDOW in flight, and the server's peak RSS (VmHWM) before and after.
//! With `readdirplus DIR SERVER_PID CONNS CALLS`: the READDIRPLUS abuse of the
//! hardening review: CONNS connections each send CALLS READDIRPLUS of DIR asking for
//! 4 GiB replies and never read; prints the server's peak and current RSS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn put(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_opaque(b: &mut Vec<u8>, d: &[u8]) {
    put(b, d.len() as u32);
    b.extend_from_slice(d);
    b.resize(b.len() + (4 - d.len() % 4) % 4, 0);
}

/// One RPC call with AUTH_UNIX (uid 0) credentials, record-marked.
fn call(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [xid, 0, 2, prog, vers, proc_] {
        put(&mut b, v);
    }
    let mut cred = Vec::new();
    put(&mut cred, 0); // stamp
    put_opaque(&mut cred, b"bench");
    put(&mut cred, 0); // uid
    put(&mut cred, 0); // gid
    put(&mut cred, 0); // no gids
    put(&mut b, 1); // AUTH_UNIX
    put_opaque(&mut b, &cred);
    put(&mut b, 0); // verifier AUTH_NULL
    put(&mut b, 0);
    b.extend_from_slice(args);
    let mut rec = Vec::with_capacity(b.len() + 4);
    put(&mut rec, 0x8000_0000 | b.len() as u32);
    rec.extend_from_slice(&b);
    rec
}

fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut m = [0u8; 4];
        s.read_exact(&mut m).expect("reply record mark");
        let mark = u32::from_be_bytes(m);
        let mut frag = vec![0u8; (mark & 0x7fff_ffff) as usize];
        s.read_exact(&mut frag).expect("reply body");
        out.extend_from_slice(&frag);
        if mark & 0x8000_0000 != 0 {
            return out;
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// LOOKUP of `name` in the directory whose encoded handle is `dir`: the child's handle.
fn lookup(s: &mut TcpStream, dir: &[u8], name: &str) -> Vec<u8> {
    let mut la = dir.to_vec();
    put_opaque(&mut la, name.as_bytes());
    s.write_all(&call(2, 100_003, 3, 3, &la)).unwrap();
    let r = read_reply(s);
    let verf_len = u32_at(&r, 16) as usize;
    let at = 20 + verf_len.div_ceil(4) * 4;
    assert_eq!(u32_at(&r, at + 4), 0, "LOOKUP {name} failed");
    let flen = u32_at(&r, at + 8) as usize;
    r[at + 12..at + 12 + flen].to_vec()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args.first().expect("PORT").parse().unwrap();
    let secs: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5.0);
    let window: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(64);
    let export = args.get(3).cloned().unwrap_or_else(|| "/backup".into());
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    // MOUNT v3 MNT: reply = xid, REPLY, MSG_ACCEPTED, verf(flavor,len), SUCCESS, status, fh.
    let mut a = Vec::new();
    put_opaque(&mut a, export.as_bytes());
    s.write_all(&call(1, 100_005, 3, 1, &a)).unwrap();
    let r = read_reply(&mut s);
    let verf_len = u32_at(&r, 16) as usize;
    let at = 20 + verf_len.div_ceil(4) * 4;
    assert_eq!(u32_at(&r, at), 0, "RPC call not accepted");
    assert_eq!(u32_at(&r, at + 4), 0, "MNT failed");
    let fh_len = u32_at(&r, at + 8) as usize;
    let fh = r[at + 12..at + 12 + fh_len].to_vec();
    eprintln!("mounted {export}: handle of {fh_len} bytes");
    let mut ga = Vec::new();
    put_opaque(&mut ga, &fh);
    let mut proc_ = 1; // GETATTR
    let mut pid = None;
    if args.get(4).map(String::as_str) == Some("write") {
        let name = args.get(5).expect("FILE");
        pid = args.get(6).cloned();
        let ffh = lookup(&mut s, &ga, name);
        ga.clear();
        put_opaque(&mut ga, &ffh);
        put(&mut ga, 0); // offset high (patched per call below is unnecessary: same range)
        put(&mut ga, 0); // offset low
        put(&mut ga, 1 << 20);
        put(&mut ga, 0); // UNSTABLE
        put_opaque(&mut ga, &vec![0x5au8; 1 << 20]);
        proc_ = 7;
    }
    if args.get(4).map(String::as_str) == Some("readdirplus") {
        let name = args.get(5).expect("DIR");
        let pid = args.get(6).expect("SERVER_PID").clone();
        let conns: usize = args.get(7).map_or(4, |v| v.parse().unwrap());
        let calls: u32 = args.get(8).map_or(64, |v| v.parse().unwrap());
        let dfh = lookup(&mut s, &ga, name);
        let mut ra = Vec::new();
        put_opaque(&mut ra, &dfh);
        for v in [0, 0, 0, 0, u32::MAX, u32::MAX] {
            put(&mut ra, v); // cookie, verifier, dircount, maxcount
        }
        let status = |key: &str| -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
                / 1024
        };
        println!("server RSS before: {} MiB", status("VmRSS"));
        let mut held = Vec::new();
        for c in 0..conns {
            let mut t = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let burst: Vec<u8> = (0..calls)
                .flat_map(|i| call(10_000 * (c as u32 + 1) + i, 100_003, 3, 17, &ra))
                .collect();
            t.write_all(&burst).unwrap();
            held.push(t);
        }
        for sec in 1..=10 {
            std::thread::sleep(Duration::from_secs(1));
            eprintln!(
                "{sec} s: RSS {} MiB, peak {} MiB",
                status("VmRSS"),
                status("VmHWM")
            );
        }
        let peak = status("VmHWM");
        drop(held);
        std::thread::sleep(Duration::from_secs(3));
        println!(
            "READDIRPLUS abuse ({conns} connections x {calls} calls, replies unread): server peak RSS {peak} MiB, {} MiB 3 s after they closed",
            status("VmRSS")
        );
        return;
    }
    let hwm = |pid: &Option<String>| -> String {
        pid.as_ref()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            })
            .map(|kb| format!("{} MiB", kb.parse::<u64>().unwrap_or(0) / 1024))
            .unwrap_or_default()
    };
    let before = hwm(&pid);
    let mut reader = s.try_clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rcv = received.clone();
    let counter = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut bad = 0u64;
        let t0 = Instant::now();
        while Instant::now() < deadline {
            let r = read_reply(&mut reader);
            let verf_len = u32_at(&r, 16) as usize;
            let at = 20 + verf_len.div_ceil(4) * 4;
            if u32_at(&r, at) != 0 || u32_at(&r, at + 4) != 0 {
                bad += 1;
            }
            n += 1;
            rcv.store(n, std::sync::atomic::Ordering::Release);
        }
        (n, bad, t0.elapsed())
    });
    // Writer: keep about `window` calls ahead (replies are counted by the reader).
    let batch: Vec<u8> = (0..window as u32)
        .flat_map(|i| call(100 + i, 100_003, 3, proc_, &ga))
        .collect();
    s.write_all(&batch).unwrap();
    // Every call needs its own xid: the server drops a repeated xid as a retransmission.
    let mut sent = window as u64;
    let template = call(0, 100_003, 3, proc_, &ga);
    let mut chunk = Vec::with_capacity(template.len() * window);
    let t0 = Instant::now();
    while Instant::now() < deadline && sent < 50_000_000 {
        // Keep at most `window` calls outstanding (the server drops calls beyond its
        // limit of transactions in progress instead of queueing them).
        let free = (window as u64)
            .saturating_sub(sent - received.load(std::sync::atomic::Ordering::Acquire));
        if free < (window as u64 / 4).max(1) {
            std::thread::yield_now();
            continue;
        }
        chunk.clear();
        for _ in 0..free {
            let at = chunk.len();
            chunk.extend_from_slice(&template);
            chunk[at + 4..at + 8].copy_from_slice(&(1000 + sent as u32).to_be_bytes());
            sent += 1;
        }
        s.write_all(&chunk).unwrap();
    }
    let (n, bad, dt) = counter.join().unwrap();
    let _ = t0;
    if pid.is_some() {
        println!("server peak RSS before {before}, after {}", hwm(&pid));
    }
    println!(
        "{}: {n} replies in {:.2} s = {:.0}/s on one connection ({bad} errors)",
        if proc_ == 7 { "WRITE 1 MiB" } else { "GETATTR" },
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64()
    );
    let _ = if proc_ == 7 { "WRITE" } else { "GETATTR" };
}
