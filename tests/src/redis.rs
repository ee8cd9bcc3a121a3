//! `Redis`: a real redis-server from apt on a free loopback port, with no
//! persistence and its working directory in a temp dir; killed when dropped.
//! `command` speaks just enough RESP for tests to read back what plugins
//! stored.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

pub struct Redis {
    _dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    /// Starts redis-server; `requirepass` sets a password for the default user.
    pub fn start(requirepass: Option<&str>) -> Redis {
        Redis::start_with(requirepass, &[])
    }

    /// Starts redis-server with more `--name value` arguments (e.g. `["--timeout", "1"]`).
    pub fn start_with(requirepass: Option<&str>, args: &[&str]) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-redis-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path());
        if let Some(password) = requirepass {
            command.args(["--requirepass", password]);
        }
        command.args(args);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt install redis-server)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let redis = Redis { _dir: dir, child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Runs one command (after AUTH when `password` is given) and returns
    /// the reply as text: simple strings, errors (with their `-`), integers
    /// and bulk strings as their value, nil as "(nil)".
    pub fn command(&self, password: Option<&str>, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        if let Some(password) = password {
            stream.write_all(&encode(&["AUTH", password])).expect("write");
            assert_eq!(read_reply(&mut reader), "OK");
        }
        stream.write_all(&encode(args)).expect("write");
        read_reply(&mut reader)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn read_reply(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("redis reply");
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => line[1..].to_string(),
        Some(b'-') => line.to_string(),
        Some(b'$') if line == "$-1" => "(nil)".to_string(),
        Some(b'$') => {
            let len: usize = line[1..].parse().expect("bulk length");
            let mut value = vec![0; len + 2];
            reader.read_exact(&mut value).expect("bulk value");
            String::from_utf8_lossy(&value[..len]).into_owned()
        }
        _ => panic!("unexpected redis reply {line:?}"),
    }
}
