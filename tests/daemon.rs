//! The daemon's command line, sockets, signals and client mode.

mod common;

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn run_to_end(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vhost-switch"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn sigterm_removes_sockets_and_prints_counters() {
    let d = Daemon::start(&["p0", "p1"], &[]);
    let (s0, s1) = (d.sock("p0"), d.sock("p1"));
    {
        let mut fe = d.connect("p0");
        fe.get_features().unwrap();
        fe.conn_mut().send_raw(&[9, 9, 9], &[]).unwrap();
    }
    d.wait_log("connection closed after 3 bytes");
    let dir = d.dir.clone();
    let (code, out, _log) = d.stop();
    assert_eq!(code, Some(0));
    assert!(!s0.exists() && !s1.exists(), "sockets left behind");
    assert!(out.contains("port p0: listening on"), "{out}");
    let row = out
        .lines()
        .skip_while(|l| !l.contains("connections"))
        .find(|l| l.starts_with("p0 "))
        .expect("control counter row for p0");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..6], &["1", "1", "0", "0", "1"], "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stale_socket_is_replaced_and_non_sockets_are_not() {
    let dir = temp_dir("stale");
    let stale = dir.join("p0.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let d = Daemon::spawn(
        dir.clone(),
        &[
            "run".into(),
            "--port".into(),
            format!("p0={}", stale.display()),
        ],
    );
    d.wait_log("replacing stale socket");
    let mut fe = vhost_kit::Frontend::new(
        vhost_kit::wire::Connection::connect_retry(&stale, TIMEOUT).unwrap(),
    );
    fe.get_features().unwrap();
    drop(d);

    let dir = temp_dir("plain");
    let file = dir.join("plain");
    std::fs::write(&file, b"keep me").unwrap();
    let out = run_to_end(&["run", "--port", &format!("p0={}", file.display())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to replace") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn a_socket_in_use_is_not_stolen() {
    let d = Daemon::start(&["p0"], &[]);
    let out = run_to_end(&["run", "--port", &format!("p0={}", d.sock("p0").display())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running backend"));
    assert_ne!(d.connect("p0").get_features().unwrap(), 0);
}

#[test]
fn bad_flags_and_configs_give_one_clear_line() {
    let dir = temp_dir("cfg");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["run".into()], "no ports"),
        (
            vec!["run".into(), "--port".into(), "p0".into()],
            "NAME=SOCKET_PATH",
        ),
        (
            vec![
                "run".into(),
                "--port".into(),
                "a=/x".into(),
                "--mode".into(),
                "xconnect".into(),
            ],
            "even number",
        ),
        (
            vec![
                "run".into(),
                "--port".into(),
                "a=/x".into(),
                "--pmd-cores".into(),
                "99".into(),
            ],
            "core 99",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                dir.join("missing.toml").display().to_string(),
            ],
            "cannot read config",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-switch"))
            .args(&args)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[port]]\nname = \"a\"\n").unwrap();
    let out = run_to_end(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field `socket`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A daemon built without the `demo` feature (`--no-default-features`) keeps the
/// subcommand and refuses it in one line, exit status 1.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_generator_says_so() {
    let out = run_to_end(&["demo", "--seconds", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "vhost-switch: this build has no traffic generator: rebuild with the default `demo` feature"
    );
}

#[test]
fn config_file_ports_and_flag_overrides() {
    let dir = temp_dir("toml");
    let cfg = dir.join("switch.toml");
    std::fs::write(
        &cfg,
        format!(
            "mode = \"xconnect\"\n[[port]]\nname = \"a\"\nsocket = \"{}\"\nmac = \"02:00:00:00:00:aa\"\n[[port]]\nname = \"b\"\nsocket = \"{}\"\n",
            dir.join("a.sock").display(),
            dir.join("b.sock").display()
        ),
    )
    .unwrap();
    let b2 = dir.join("b2.sock");
    let d = Daemon::spawn(
        dir.clone(),
        &[
            "run".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--port".into(),
            format!("b={}", b2.display()),
        ],
    );
    d.wait_for_socket(&dir.join("a.sock"));
    d.wait_for_socket(&b2);
    let mut fe = vhost_kit::Frontend::connect(dir.join("a.sock")).unwrap();
    fe.set_protocol_features(CONFIG, false).unwrap();
    assert_eq!(&fe.get_config(0, 6, 0).unwrap(), &[2, 0, 0, 0, 0, 0xaa]);
    assert!(!dir.join("b.sock").exists());
}

#[test]
fn client_mode_connects_and_reconnects_with_backoff() {
    let dir = temp_dir("client");
    let path = dir.join("fe.sock");
    // The front-end is not there yet: the switch keeps trying.
    let d = Daemon::spawn(
        dir.clone(),
        &[
            "run".into(),
            "--client".into(),
            format!("c0={}", path.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let listener = UnixListener::bind(&path).unwrap();
    // Each accept proves a (re)connection: the switch comes back after every drop. The
    // last front-end stays open: while it is, the switch has no reason to connect a 4th
    // time, so the count below is exactly the connections accepted here.
    let mut last = None;
    for _ in 0..3 {
        drop(last.take());
        let (stream, _) = accept_within(&listener, TIMEOUT);
        let mut fe = vhost_kit::Frontend::from_stream(stream).unwrap();
        fe.set_timeout(TIMEOUT);
        negotiate(&mut fe, REPLY_ACK, VERSION_1 | BIT30);
        last = Some(fe);
    }
    d.wait_log_count("front-end connected", 3);
    assert_eq!(d.log().matches("front-end connected").count(), 3);
    let port = &d.ctl("stats")["ports"][0];
    assert_eq!(port["control"]["connections"], 3, "{port}");
    assert_eq!(port["connected"], true, "{port}");
    drop(last);
    // The client socket is the front-end's: the switch never removes it.
    let (code, _, _) = d.stop();
    assert_eq!(code, Some(0));
    assert!(path.exists());
    let _ = std::fs::remove_dir_all(dir);
}

fn accept_within(
    listener: &UnixListener,
    timeout: Duration,
) -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::SocketAddr,
) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).unwrap();
                return (s, a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("switch never connected: {e}"),
        }
    }
}

/// Connects to `port` and asks GET_FEATURES, retrying while the switch refuses the
/// connection as a second front-end: the previous connection's end reaches the switch only
/// once every copy of its descriptor is closed, and a test thread forking a daemon at that
/// moment holds a copy until its child execs (the switch is right to refuse meanwhile).
fn answered_connect(d: &Daemon, port: &str) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut fe = d.connect(port);
        match fe.get_features() {
            Ok(features) => return features,
            Err(vhost_kit::error::Error::Closed) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("GET_FEATURES on {port}: {e}"),
        }
    }
}

#[test]
fn a_thousand_connects_and_disconnects_leak_nothing() {
    let mut d = Daemon::start(&["p0", "p1"], &[]);
    let (fds, maps) = (d.fd_count(), d.map_count());
    for i in 0..1000 {
        let fe = d.connect("p0");
        if i % 10 == 0 {
            drop(fe);
            assert_ne!(answered_connect(&d, "p0"), 0);
        }
    }
    // The last one may still be in the accept queue; a completed handshake proves the
    // port is free again.
    assert_ne!(answered_connect(&d, "p0"), 0);
    d.wait_fds(fds);
    d.wait_maps(maps);
    assert!(d.alive());
    let mut other = d.connect("p1");
    assert_ne!(other.get_features().unwrap(), 0);
}

#[test]
fn a_front_end_that_never_reads_replies_is_dropped_not_waited_for() {
    let mut d = Daemon::start(&["p0", "p1"], &[]);
    let mut fe = d.connect("p0");
    // GET_FEATURES asks for a reply each time; never read them.
    let msg: Vec<u8> = [1u32, 1, 0].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let many: Vec<u8> = msg
        .iter()
        .copied()
        .cycle()
        .take(msg.len() * 20000)
        .collect();
    let _ = fe
        .conn_mut()
        .stream()
        .set_write_timeout(Some(Duration::from_secs(2)));
    let _ = fe.conn_mut().send_raw(&many, &[]);
    d.wait_log("could not send a reply");
    assert!(d.alive());
    assert_ne!(d.connect("p1").get_features().unwrap(), 0);
}
