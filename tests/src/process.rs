//! A backend in its own operating-system process (Python's `http.server`, HTTP/1.1 keep-alive),
//! for tests that `kill -9` a backend: its sockets die with it, exactly as a crashed pod's do.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

const SERVER: &str = r#"
import http.server, json, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"backend": name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A backend process.
pub struct ProcessBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl ProcessBackend {
    /// Starts one named `name`; `None` when `python3` cannot be run.
    pub fn start(name: &str) -> Option<Self> {
        let mut child = Command::new("python3")
            .args(["-c", SERVER, name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take()?)
            .read_line(&mut line)
            .ok()?;
        let port: u16 = line.trim().parse().ok()?;
        Some(ProcessBackend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        })
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
