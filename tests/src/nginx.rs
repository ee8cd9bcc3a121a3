//! `Nginx`: nginx from apt as a second kind of upstream. Runs in the
//! foreground (`daemon off;`) with every path (pid, logs, temp dirs) inside a
//! temp prefix, on a free port; killed when dropped.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

pub struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `http_body` inside its `http { }` block. In the body,
    /// `{{port}}` is the allocated listen port and `{{dir}}` the prefix dir;
    /// the access log `{{dir}}/access.log` uses format `reuse`
    /// (`$connection $connection_requests $request`) unless the body sets its
    /// own.
    pub fn start(http_body: &str) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-nginx-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let d = dir.path().display().to_string();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "html"] {
            fs::create_dir_all(dir.path().join(sub)).expect("nginx temp dirs");
        }
        let body = http_body.replace("{{port}}", &port.to_string()).replace("{{dir}}", &d);
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  log_format reuse '$connection $connection_requests $request';\n\
             access_log {d}/access.log reuse;\n  client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  keepalive_requests 100000;\n{body}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("stderr.log")).expect("stderr file"))
            .spawn()
            .expect("spawn nginx (apt install nginx)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut n = Nginx { dir, child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("nginx exited ({s}): {}\n{}", n.read("stderr.log"), n.read("error.log"));
            }
            assert!(
                Instant::now() < deadline,
                "nginx not listening on {addr}: {}",
                n.read("error.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the prefix dir as text (empty when absent).
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Access-log lines in the default `reuse` format as
    /// (connection serial, requests on that connection, request line).
    pub fn access_entries(&self) -> Vec<(u64, u64, String)> {
        self.read("access.log")
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{request, Conn};

    #[test]
    fn serves_a_static_file_and_logs_connection_reuse() {
        let n = Nginx::start("server { listen 127.0.0.1:{{port}}; root {{dir}}/html; }");
        fs::write(n.dir().join("html/hello.txt"), "hello from nginx\n").unwrap();
        let mut c = Conn::connect(n.addr()).unwrap();
        for _ in 0..3 {
            let r = c.exchange(&request("GET", "x", "/hello.txt", &[], None)).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body_str(), "hello from nginx\n");
        }
        drop(c);
        let ok = crate::wait::until(Duration::from_secs(5), || n.access_entries().len() == 3);
        assert!(ok, "access log: {}", n.read("access.log"));
        let e = n.access_entries();
        assert!(e.iter().all(|(conn, _, _)| *conn == e[0].0));
        assert_eq!(e.iter().map(|(_, r, _)| *r).max(), Some(3));
    }
}
