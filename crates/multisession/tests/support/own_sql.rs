//! PostgreSQL and MariaDB servers of a test's own, to kill and restart.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

use super::outage::{OwnServer, Server, answers, start_again, start_on_a_free_port};

pub struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    pub fn new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries (scripts/services.sh installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .max()
            .expect("a PostgreSQL version");
        let dir = tempfile::tempdir().expect("a temporary directory");
        run(Command::new("chown").arg("postgres:").arg(dir.path()));
        let data = dir.path().join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]));
        let mut own = Self { bin, dir, port: 0 };
        start_on_a_free_port(|port| own.try_start(port));
        own
    }

    /// Starts PostgreSQL on `port`; `false` if the port was taken. `pg_ctl
    /// -w` returns once our postmaster reports itself ready in its pid file,
    /// and it is ready only with the port bound; it must then answer there.
    fn try_start(&mut self, port: u16) -> bool {
        let log = self.dir.path().join("log");
        let _ = std::fs::remove_file(&log);
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.dir.path().display());
        let started = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(&log)
            .args(["-w", "-o", &options, "start"])
            .output()
            .expect("pg_ctl runs");
        if !started.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(log.contains("Address already in use"), "PostgreSQL did not start: {log}");
            return false;
        }
        // An SSLRequest: PostgreSQL answers `N` (this one has no TLS).
        assert!(answers(port, &[0, 0, 0, 8, 4, 210, 22, 47], b"N"), "PostgreSQL on port {port} does not answer");
        self.port = port;
        true
    }
}

impl OwnPostgres {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Server for OwnPostgres {
    fn start(&mut self) {
        let port = self.port;
        start_again(port, || self.try_start(port));
    }

    fn kill(&mut self) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .output();
    }
}

/// A MariaDB of the test's own: a data directory made once, a `mariadbd`
/// started on it as often as the test likes.
pub fn own_mariadb() -> OwnServer {
    let data = tempfile::tempdir().expect("a temporary directory");
    run(Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--datadir={}", data.path().join("data").display())));
    OwnServer::new(move |port, dir| {
        let mut mariadbd = Command::new("mariadbd");
        mariadbd
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.path().join("data").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", dir.join("error.log").display()));
        mariadbd
    })
}

pub fn mariadb_url(server: &OwnServer) -> String {
    format!("mysql://root@127.0.0.1:{}/mysql", server.port)
}
