//! RESP (the Redis serialization protocol, version 2): encoding a command as an array of bulk strings, and parsing
//! one reply. Just what the rate limiter needs; pure code, tested on the host.

/// One decoded reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// None is the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// None is the null array (`*-1`).
    Array(Option<Vec<Reply>>),
}

/// `args` as the RESP array of bulk strings Redis expects from a client.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses the one reply that must fill `bytes` exactly.
pub fn parse(bytes: &[u8]) -> Result<Reply, String> {
    let (reply, used) = parse_at(bytes, 0, 0)?;
    if used != bytes.len() {
        return Err(format!("{} bytes after the reply", bytes.len() - used));
    }
    Ok(reply)
}

/// Nested arrays deeper than this are refused rather than recursed into.
const MAX_DEPTH: usize = 8;

fn parse_at(bytes: &[u8], at: usize, depth: usize) -> Result<(Reply, usize), String> {
    let kind = *bytes.get(at).ok_or("truncated reply")?;
    let (line, next) = line(bytes, at + 1)?;
    match kind {
        b'+' => Ok((Reply::Simple(text(line)?), next)),
        b'-' => Ok((Reply::Error(text(line)?), next)),
        b':' => Ok((Reply::Integer(integer(line)?), next)),
        b'$' => match integer(line)? {
            -1 => Ok((Reply::Bulk(None), next)),
            len if len >= 0 => {
                let end = next.checked_add(len as usize).ok_or("bulk length overflows")?;
                let data = bytes.get(next..end).ok_or("truncated bulk string")?;
                if bytes.get(end..end + 2) != Some(b"\r\n") {
                    return Err("bulk string not followed by CRLF".into());
                }
                Ok((Reply::Bulk(Some(data.to_vec())), end + 2))
            }
            len => Err(format!("invalid bulk length {len}")),
        },
        b'*' => match integer(line)? {
            -1 => Ok((Reply::Array(None), next)),
            len if len >= 0 => {
                if depth == MAX_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                // Every element takes at least 3 bytes, which bounds the allocation by the input size.
                let mut items = Vec::with_capacity((len as usize).min(bytes.len() / 3));
                let mut at = next;
                for _ in 0..len {
                    let (item, after) = parse_at(bytes, at, depth + 1)?;
                    items.push(item);
                    at = after;
                }
                Ok((Reply::Array(Some(items)), at))
            }
            len => Err(format!("invalid array length {len}")),
        },
        other => Err(format!("unknown reply type byte 0x{other:02x}")),
    }
}

/// The bytes from `at` up to the next CRLF, and the index after it.
fn line(bytes: &[u8], at: usize) -> Result<(&[u8], usize), String> {
    let rest = bytes.get(at..).ok_or("truncated reply")?;
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("reply line without CRLF")?;
    Ok((&rest[..end], at + end + 2))
}

fn text(line: &[u8]) -> Result<String, String> {
    String::from_utf8(line.to_vec()).map_err(|_| "reply line is not UTF-8".to_string())
}

fn integer(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{:?} is not an integer", String::from_utf8_lossy(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        assert_eq!(command(&[b"INCR", b"k"]), b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n");
        assert_eq!(
            command(&[b"SET", b"", b"a\r\nb"]),
            b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\na\r\nb\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n"), Ok(Reply::Simple("OK".into())));
        assert_eq!(
            parse(b"-ERR unknown command\r\n"),
            Ok(Reply::Error("ERR unknown command".into()))
        );
        assert_eq!(parse(b":42\r\n"), Ok(Reply::Integer(42)));
        assert_eq!(parse(b":-2\r\n"), Ok(Reply::Integer(-2)));
        assert_eq!(parse(b"$5\r\nhe\r\no\r\n"), Ok(Reply::Bulk(Some(b"he\r\no".to_vec()))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Reply::Bulk(Some(vec![]))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Reply::Bulk(None)));
        assert_eq!(parse(b"*-1\r\n"), Ok(Reply::Array(None)));
        assert_eq!(parse(b"*0\r\n"), Ok(Reply::Array(Some(vec![]))));
        assert_eq!(
            parse(b"*3\r\n:3\r\n:57\r\n*1\r\n$1\r\nx\r\n"),
            Ok(Reply::Array(Some(vec![
                Reply::Integer(3),
                Reply::Integer(57),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])),
            ])))
        );
    }

    #[test]
    fn refuses_malformed_and_truncated_replies() {
        for bad in [
            &b""[..],
            b":12",
            b":12\r\n:13\r\n",
            b":1x\r\n",
            b"$5\r\nabc\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*2\r\n:1\r\n",
            b"*-3\r\n",
            b"!3\r\nabc\r\n",
            b"$99999999999999999999\r\n",
            b"+\xff\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?} parsed", String::from_utf8_lossy(bad));
        }
        let deep = [b"*1\r\n".repeat(MAX_DEPTH + 1), b":1\r\n".to_vec()].concat();
        assert_eq!(parse(&deep), Err("arrays nested too deeply".to_string()));
        let just_deep_enough = [b"*1\r\n".repeat(MAX_DEPTH), b":1\r\n".to_vec()].concat();
        assert!(parse(&just_deep_enough).is_ok());
    }
}
