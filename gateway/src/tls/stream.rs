//! TLS over a worker's TCP stream: reads the ClientHello first (so SNI can
//! choose the server config, which differs per host when it verifies client
//! certificates), then drives rustls with owned buffers through monoio.
//!
//! rustls does the cryptography and the state machine; this module only moves
//! bytes: ciphertext from the socket into `ServerConnection::read_tls`,
//! records out of `write_tls` onto the socket.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustls::server::Acceptor;
use rustls::ServerConnection;

use super::ListenerTls;
use crate::http::io::{read_more, write_all};

/// Ciphertext buffered while waiting for a complete ClientHello. A real one
/// is a few KiB; more than this is garbage or abuse.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// A fatal `unrecognized_name` alert (RFC 6066 §3), TLS 1.2 record framing,
/// which TLS 1.3 clients accept for alerts sent before the handshake.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Plaintext pulled out of rustls per read.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no certificate for the requested server name")]
    UnknownServerName,
    #[error("handshake timed out")]
    Timeout,
    #[error("client hello larger than {MAX_CLIENT_HELLO} bytes")]
    ClientHelloTooLarge,
    #[error("connection closed during the handshake")]
    Closed,
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("I/O: {0}")]
    Io(io::Error),
}

impl HandshakeError {
    /// The label of `tollgate_tls_handshakes_total{result}`.
    pub fn result_label(&self) -> &'static str {
        match self {
            HandshakeError::UnknownServerName => "rejected",
            HandshakeError::Timeout => "timeout",
            _ => "failed",
        }
    }
}

pub struct TlsStream {
    tcp: TcpStream,
    conn: ServerConnection,
    /// Ciphertext received and not yet handed to rustls.
    incoming: Vec<u8>,
    /// Records waiting to be written.
    outgoing: Vec<u8>,
    /// Where rustls copies plaintext out; zeroed once per connection, not
    /// once per read.
    plaintext: Box<[u8]>,
}

/// Completes a server handshake on `tcp` within the listener's handshake
/// timeout. On failure an alert is sent when there is one to send.
pub async fn accept(tcp: TcpStream, tls: &ListenerTls) -> Result<TlsStream, HandshakeError> {
    let deadline = Instant::now() + tls.handshake_timeout();
    let mut tcp = tcp;
    let mut incoming = Vec::with_capacity(crate::http::io::READ_CHUNK);
    let mut outgoing = Vec::new();
    let mut acceptor = Acceptor::default();
    let conn = loop {
        read_before(&mut tcp, &mut incoming, deadline).await?;
        if incoming.len() > MAX_CLIENT_HELLO {
            return Err(HandshakeError::ClientHelloTooLarge);
        }
        feed(&mut incoming, |bytes| acceptor.read_tls(bytes)).map_err(HandshakeError::Io)?;
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let Some(config) = tls.server_config(accepted.client_hello().server_name()) else {
                    outgoing.extend_from_slice(&UNRECOGNIZED_NAME_ALERT);
                    let _ = write_all(&mut tcp, &mut outgoing, remaining(deadline)).await;
                    return Err(HandshakeError::UnknownServerName);
                };
                match accepted.into_connection(config) {
                    Ok(conn) => break conn,
                    Err((error, mut alert)) => {
                        let _ = alert.write(&mut outgoing);
                        let _ = write_all(&mut tcp, &mut outgoing, remaining(deadline)).await;
                        return Err(error.into());
                    }
                }
            }
            Err((error, mut alert)) => {
                let _ = alert.write(&mut outgoing);
                let _ = write_all(&mut tcp, &mut outgoing, remaining(deadline)).await;
                return Err(error.into());
            }
        }
    };
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming,
        outgoing,
        plaintext: vec![0; PLAINTEXT_CHUNK].into_boxed_slice(),
    };
    while stream.conn.is_handshaking() {
        stream.flush(remaining(deadline)).await.map_err(HandshakeError::Io)?;
        if !stream.conn.is_handshaking() {
            break;
        }
        read_before(&mut stream.tcp, &mut stream.incoming, deadline).await?;
        if let Err(error) = stream.absorb() {
            let _ = stream.flush(remaining(deadline)).await;
            return Err(HandshakeError::Tls(error));
        }
    }
    // TLS 1.3 session tickets go out right after the handshake.
    stream.flush(remaining(deadline)).await.map_err(HandshakeError::Io)?;
    Ok(stream)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

async fn read_before(tcp: &mut TcpStream, incoming: &mut Vec<u8>, deadline: Instant) -> Result<(), HandshakeError> {
    match read_more(tcp, incoming, remaining(deadline)).await {
        Ok(0) => Err(HandshakeError::Closed),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::TimedOut => Err(HandshakeError::Timeout),
        Err(error) => Err(HandshakeError::Io(error)),
    }
}

/// Hands every buffered ciphertext byte to `read_tls`, which may take them in
/// several calls.
fn feed(incoming: &mut Vec<u8>, mut read_tls: impl FnMut(&mut &[u8]) -> io::Result<usize>) -> io::Result<()> {
    let mut rest: &[u8] = incoming;
    while !rest.is_empty() {
        if read_tls(&mut rest)? == 0 {
            break;
        }
    }
    let consumed = incoming.len() - rest.len();
    incoming.drain(..consumed);
    Ok(())
}

impl TlsStream {
    /// Version, cipher suite and SNI of the finished handshake, as plugins
    /// read them through the `connection.*` properties.
    pub fn session_facts(&self) -> (&'static str, String, String) {
        let cipher = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or_default()
            .to_string();
        let sni = self.conn.server_name().unwrap_or_default().to_string();
        (self.protocol_label(), cipher, sni)
    }

    pub fn protocol_label(&self) -> &'static str {
        match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "none",
        }
    }

    /// Gives buffered ciphertext to rustls and processes it.
    fn absorb(&mut self) -> Result<(), rustls::Error> {
        let conn = &mut self.conn;
        feed(&mut self.incoming, |bytes| conn.read_tls(bytes)).map_err(|e| rustls::Error::General(e.to_string()))?;
        conn.process_new_packets().map(|_| ())
    }

    /// Writes every pending record.
    async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.outgoing)?;
        }
        if !self.outgoing.is_empty() {
            write_all(&mut self.tcp, &mut self.outgoing, timeout).await?;
            self.outgoing.clear();
        }
        Ok(())
    }

    /// Appends decrypted bytes to `buf`; 0 at the end of the stream.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.conn.reader().read(&mut self.plaintext) {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    buf.extend_from_slice(&self.plaintext[..n]);
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: the peer is gone all the same.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            // Key updates and the like want an answer before more data.
            self.flush(remaining(deadline)).await?;
            if read_more(&mut self.tcp, &mut self.incoming, remaining(deadline)).await? == 0 {
                return Ok(0);
            }
            if let Err(error) = self.absorb() {
                let _ = self.flush(remaining(deadline)).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
    }

    /// Encrypts and writes `buf[range]`.
    pub async fn write_range(&mut self, buf: &[u8], timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut written = 0;
        while written < buf.len() {
            // rustls caps what it buffers; write what it takes, flush, repeat.
            written += self.conn.writer().write(&buf[written..])?;
            self.flush(remaining(deadline)).await?;
        }
        Ok(())
    }

    /// Sends close_notify (best effort) before the socket closes.
    pub async fn close(&mut self, timeout: Duration) {
        self.conn.send_close_notify();
        let _ = self.flush(timeout).await;
    }

    /// The parts a protocol tunnel needs: the socket, the TLS state, and any
    /// ciphertext already read.
    pub fn into_parts(self) -> (TcpStream, ServerConnection, Vec<u8>) {
        (self.tcp, self.conn, self.incoming)
    }
}
